"""Write-then-rename: a reader (or a crash) never sees half a file, or half a directory, under the real name."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` into a temporary sibling, then rename it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def staging_dir(path: Path, label: str = "tmp") -> Path:
    """A fresh hidden sibling directory (`.NAME.LABEL-PID-RANDOM`) to build `path` in before `replace_dir`.

    A sibling, so the final rename stays on one filesystem; hidden, so nothing lists it as the real thing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = path.parent / f".{path.name}.{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    return stage


def replace_dir(stage: Path, path: Path) -> None:
    """Renames the finished directory `stage` onto `path`, replacing whatever directory is there.

    An existing `path` is first renamed aside and removed only after the swap, so the name always
    points at a complete directory (old or new) except for the instant between two renames.
    """
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(stage, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
