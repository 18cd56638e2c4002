"""Versioned JSON manifests: small metadata files that name their format and version.

Scene databases, datasets, checkpoints and training state each describe themselves with one JSON
file. Reading one checks the format and version and fails with the file's path and what to do;
writing one is atomic, so a crash never leaves half a manifest under the real name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gauntlet.runtime.atomic_files import atomic_write


class ManifestError(ValueError):
    """A manifest is missing, unreadable, or of another format or version; names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def write_json(path: str | Path, body: Any, *, indent: int | None = 1) -> Path:
    """Writes `body` as JSON (write-then-rename); NumPy scalars become floats."""
    path = Path(path)
    text = json.dumps(body, indent=indent, default=_json_default)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


ErrorFactory = Callable[[Path, str], Exception]  # (file, problem) -> the caller's own error type


def read_json(path: str | Path, what: str = "file", *, error: ErrorFactory = ManifestError,
              hint: str = "") -> Any:
    """The parsed JSON at `path`; a missing or malformed file raises `error(path, problem)`.

    `hint` says what to do when the file is missing (e.g. which command creates it).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(path, f"missing ({what} not found{'; ' + hint if hint else ''})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(path, f"garbled JSON in {what} ({exc})") from None
    except OSError as exc:
        raise error(path, f"unreadable {what} ({exc})") from None


def read_manifest(path: str | Path, *, format_name: str, versions: tuple[int, ...],
                  format_key: str = "format", version_key: str = "format_version",
                  what: str = "manifest", error: ErrorFactory = ManifestError, hint: str = "") -> dict[str, Any]:
    """A manifest of `format_name` in one of `versions`, else `error(path, problem)` naming the field.

    `error` lets each format raise its own exception type (e.g. a CheckpointError) with the same
    wording everywhere; `hint` says what to do when the file is missing.
    """
    body = read_json(path, what, error=error, hint=hint)
    if not isinstance(body, dict):
        raise error(path, f"{what} is a JSON {type(body).__name__}, not an object")
    if body.get(format_key) != format_name:
        raise error(path, f"field {format_key!r} is {body.get(format_key)!r}: not a {format_name} {what}")
    if body.get(version_key) not in versions:
        supported = ", ".join(map(str, versions))
        raise error(path, f"field {version_key!r} is {body.get(version_key)!r}; this code reads version "
                          f"{supported} (upgrade Gauntlet, or re-create it with this version)")
    return body


def jsonable(value: Any) -> Any:
    """`value` with NumPy arrays as lists, NumPy scalars as numbers, tuples as lists and keys as
    strings, so `json.dumps` takes it (anything else unknown becomes its `str`)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()  # NumPy arrays and scalars, without importing NumPy here
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()  # NumPy scalars
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
