"""LoRA adapter names: names, never paths.

A client names an adapter (HTTP body, query or header, a WebSocket frame, a gRPC request, a handle
call); the replica loads `<adapters_dir>/<name>`. The name is checked against ADAPTER_NAME at the
edge of every protocol (400 otherwise), and the directory it resolves to, symlinks followed, must
be a direct child of the adapters directory (404 otherwise, with the same answer whether or not
anything exists at a path outside it). No answer carries a host path: a broken adapter directory is
reported by adapter name and the file's name inside it.

Canonical name: the resolved directory's own name, so `b -> a` (a symlink inside the adapters
directory) and `a` share one multiplex slot and one loaded copy.
"""

from __future__ import annotations

import os
import re
from typing import Any

ADAPTER_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # the one definition of what an adapter name is
_ADAPTER_NAME_RE = re.compile(ADAPTER_NAME)


class AdapterNameError(ValueError):
    """Not a valid adapter name (the client's mistake: 400)."""


class UnknownAdapterError(ValueError):
    """No usable adapter of that name in the adapters directory (404)."""

    def __init__(self, adapter: str, known: list[str]):
        super().__init__(f"unknown adapter {adapter!r}; available: {known or 'none'}")
        self.adapter = adapter


def check_adapter_name(value: Any) -> str | None:
    """`value` as an adapter name, None for no adapter (None or ""); AdapterNameError otherwise.

    The message quotes at most 40 characters of what was sent (repr: no control characters)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise AdapterNameError(f"adapter: expected a string, got {type(value).__name__}")
    if _ADAPTER_NAME_RE.fullmatch(value) is None:
        raise AdapterNameError(f"adapter: {value[:40]!r} is not a name of the form {ADAPTER_NAME}")
    return value


def resolve_adapter(adapters_dir: str | None, name: str) -> tuple[str, str]:
    """(canonical name, real directory) of adapter `name`, or UnknownAdapterError.

    `name` must already be valid (check_adapter_name). The real path of `<adapters_dir>/<name>`
    must be a directory whose parent is the real adapters directory: a symlink that leads out of it
    is unknown, exactly like a name that does not exist."""
    if adapters_dir and os.path.isdir(adapters_dir):
        root = os.path.realpath(adapters_dir)
        real = os.path.realpath(os.path.join(root, name))
        if os.path.dirname(real) == root and os.path.isdir(real) and is_adapter_name(os.path.basename(real)):
            return os.path.basename(real), real
    raise UnknownAdapterError(name, known_adapters(adapters_dir))


def is_adapter_name(name: str) -> bool:
    """Whether `name` is a valid adapter name (no exception: for listing a directory)."""
    return _ADAPTER_NAME_RE.fullmatch(name) is not None


def known_adapters(adapters_dir: str | None) -> list[str]:
    """The names a client may use: entries of the adapters directory that resolve inside it."""
    if not adapters_dir or not os.path.isdir(adapters_dir):
        return []
    root = os.path.realpath(adapters_dir)
    names = []
    for entry in sorted(os.listdir(root)):
        real = os.path.realpath(os.path.join(root, entry))
        if is_adapter_name(entry) and os.path.dirname(real) == root and os.path.isdir(real):
            names.append(entry)
    return names


def load_failure_message(name: str, adapter_dir: str, exc: BaseException) -> str:
    """What a client is told when adapter `name` exists but cannot be loaded: the adapter's name,
    the failing file's name inside its directory and the problem, never a host path."""
    from gauntlet.policies.checkpoints import CheckpointError

    if isinstance(exc, CheckpointError):
        where = os.path.relpath(exc.path, adapter_dir) if _inside(exc.path, adapter_dir) else os.path.basename(exc.path)
        problem = exc.problem
    else:
        where, problem = "", type(exc).__name__  # an arbitrary message may quote any path
    # Longest first: the adapter's own directory, then the adapters directory holding it.
    for prefix, shown in ((adapter_dir, f"<{name}>"), (os.path.dirname(adapter_dir), "<adapters-dir>")):
        problem = problem.replace(prefix, shown)
    return f"adapter {name!r} cannot be loaded: " + (f"{where}: " if where else "") + problem


def _inside(path: str, directory: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), directory]) == directory
    except ValueError:  # different drives / relative vs absolute
        return False
