"""Write-then-rename: a reader (or a crash) never sees half a file, or half a directory, under the real name.

Also the exclusive lock a process holds on a directory it writes (`DirLock`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType


def fsync_dir(path: Path | str) -> None:
    """Flushes a directory's entries (a rename or a new name in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a filesystem that cannot sync directories (nothing to do)
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` into a temporary sibling, then rename it onto `path`.

    The data are fsynced before the rename and the directory after it: without the first, a power
    loss can leave the new name pointing at an empty or partial file (the rename reached the disk,
    the data had not); without the second, the rename itself may be lost.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class DirLockedError(RuntimeError):
    """Another process holds the directory's lock; `pid` is that process (None if it is not known yet)."""

    def __init__(self, directory: Path, pid: int | None):
        self.directory, self.pid = directory, pid
        holder = f"process {pid}" if pid is not None else "another process (pid not yet written)"
        super().__init__(f"{directory} is in use by {holder}")


class DirLock:
    """An exclusive lock on a directory: `flock` on DIR/.lock, the holder's pid written in it.

    Taken without waiting (`acquire` raises DirLockedError naming the holder). The kernel releases
    it when the holder exits, however it exits (SIGKILL, power loss), so a lock is never stale. The
    file descriptor is not inherited by child processes (Python opens files close-on-exec), so a
    Ray daemon started by the holder does not keep the lock after the holder is gone. The file stays
    (removing it would let a third process lock a new file while a second still holds the old one).
    """

    NAME = ".lock"

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self._file = None

    def acquire(self) -> DirLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            raise DirLockedError(self.directory, int(text) if text.isdigit() else None) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None

    def __enter__(self) -> DirLock:
        return self if self._file is not None else self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


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
