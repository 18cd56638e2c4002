"""Versioned JSON manifests: small metadata files that name their format and version.

Scene databases, datasets, checkpoints and training state each describe themselves with one JSON
file. Reading one checks the format and version and fails with the file's path and what to do;
writing one is atomic, so a crash never leaves half a manifest under the real name.
"""

from __future__ import annotations

import json
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


def read_json(path: str | Path, what: str = "file") -> Any:
    """The parsed JSON at `path`; a missing or malformed file raises ManifestError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(path, f"unreadable {what} ({exc})") from None


def read_manifest(path: str | Path, *, format_name: str, versions: tuple[int, ...],
                  format_key: str = "format", version_key: str = "format_version",
                  what: str = "manifest") -> dict[str, Any]:
    """A manifest of `format_name` in one of `versions`, else ManifestError saying what was found."""
    body = read_json(path, what)
    if not isinstance(body, dict):
        raise ManifestError(path, f"{what} is a JSON {type(body).__name__}, not an object")
    if body.get(format_key) != format_name:
        raise ManifestError(path, f"not a {format_name} {what} ({format_key}={body.get(format_key)!r})")
    if body.get(version_key) not in versions:
        raise ManifestError(path, f"{version_key} {body.get(version_key)!r} is not supported (this code reads "
                                  f"{', '.join(map(str, versions))}); upgrade Gauntlet or regenerate it")
    return body


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()  # NumPy scalars
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
