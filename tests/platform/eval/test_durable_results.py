"""Durable results: fsynced atomic writes, one process per run directory, compaction that loses nothing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gauntlet.platform.eval.episode import WorkItem
from gauntlet.platform.eval.results import ResultsStore, new_row
from gauntlet.runtime.atomic_files import DirLock, DirLockedError, atomic_write

ROOT = Path(__file__).resolve().parents[3]
SCENE = {"task": "lift", "variant": "D0", "error_type": "drop", "category": "natural"}


def _syscalls(code: str, tmp_path: Path) -> list[str]:
    """The openat/fsync/rename calls of `python -c code`, as strace prints them (one per line)."""
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed (`apt-get install strace`): the order of fsync and rename "
                    "cannot be observed without it")
    trace = tmp_path / "trace.txt"
    out = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=openat,fsync,rename,renameat,renameat2",
                          sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if out.returncode != 0 and "ptrace" in out.stderr:
        pytest.fail(f"strace cannot trace here (ptrace not permitted): {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr[-2000:]
    return trace.read_text().splitlines()


def test_a_part_file_is_fsynced_before_its_rename_and_its_directory_after(tmp_path: Path) -> None:
    """What a power loss needs: the data on disk before the name points at it, then the name itself."""
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        from gauntlet.platform.eval.episode import WorkItem
        from gauntlet.platform.eval.results import ResultsStore, new_row
        item = WorkItem("r", "s0", "random", 0, 10)
        print(ResultsStore({str(run)!r}).write([new_row(item, {{}}, "w", "v")]))
    """)
    calls = _syscalls(code, tmp_path)
    part = run / "results" / "part-000001.parquet"
    assert ResultsStore(run).read()["scene_id"].tolist() == ["s0"]
    renames = [i for i, c in enumerate(calls) if "rename" in c and f'"{part}"' in c]
    assert len(renames) == 1, calls[-20:]
    tmp = re.search(r'rename\w*\((?:\w+, )?"([^"]+)"', calls[renames[0]]).group(1)
    assert Path(tmp).parent == part.parent and Path(tmp).name.startswith(".part-000001.parquet.")

    def fsynced(path: str, lines: list[str], directory: bool) -> bool:
        """Some fd opened on `path` is fsynced in `lines` (an fd number is reused only after close)."""
        for i, line in enumerate(lines):
            if f'"{path}"' in line and "openat" in line and ("O_DIRECTORY" in line) == directory:
                fd = re.search(r"= (\d+)$", line)
                if fd and any(re.search(rf"fsync\({fd.group(1)}\)\s+= 0", later) for later in lines[i + 1:]):
                    return True
        return False

    assert fsynced(tmp, calls[:renames[0]], directory=False), "the data must reach the disk before the rename"
    assert fsynced(str(part.parent), calls[renames[0] + 1:], directory=True), "the rename must reach the disk"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text("old"))

    def half(tmp: str) -> None:
        Path(tmp).write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def _eval(run: Path, scenes: Path, *extra: str) -> list[str]:
    return [sys.executable, "-u", "-m", "gauntlet.platform.eval", "--scenes", str(scenes), "--policy", "random",
            "--out", str(run), "--actors", "1", "--horizon", "30", "--resume", *extra]


@pytest.fixture(scope="module")
def scene_db(tmp_path_factory: pytest.TempPathFactory, generate_scenes) -> Path:
    return generate_scenes(tmp_path_factory.mktemp("durable") / "scenes", variants="D0",
                           error_types="object_pose_perturb,object_push", workers=1)


def test_a_second_resume_on_a_run_is_refused_with_the_holders_pid(ray_session, scene_db: Path,
                                                                   tmp_path: Path) -> None:
    """Two real `gauntlet eval --resume` on one run: the second exits 2 at once, naming the first."""
    run = tmp_path / "run"
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    # The first waits for an actor no node can place: it holds the run for the whole wait, idle.
    first = subprocess.Popen(_eval(run, scene_db, "--actor-resource", "nowhere", "--start-timeout-s", "600"),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = run / DirLock.NAME
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if lock.exists() and lock.read_text().strip() == str(first.pid) and (run / "run.json").exists():
                break
            time.sleep(0.2)
        assert first.poll() is None and lock.read_text().strip() == str(first.pid)
        second = subprocess.run(_eval(run, scene_db), env=env, capture_output=True, text=True, timeout=180)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by process {first.pid}" in second.stderr and "--resume" in second.stderr
        assert first.poll() is None, "the first run still holds the directory"
        assert not list(run.glob("results/part-*.parquet"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    # The kernel dropped the lock with its holder (SIGKILL): the next run takes it, no stale lock.
    with DirLock(run) as held:
        assert held.path.read_text().strip() == str(os.getpid())
        with pytest.raises(DirLockedError) as refused:
            DirLock(run).acquire()  # another open file description, even in the same process
        assert refused.value.pid == os.getpid()


_WRITER = textwrap.dedent("""
    import sys
    from gauntlet.platform.eval.episode import WorkItem
    from gauntlet.platform.eval.results import ResultsStore, new_row
    store = ResultsStore(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    for trial in range(int(sys.argv[2])):
        store.write([new_row(WorkItem("r", "s0", "random", trial, 10), {}, "writer", "v")])
""")


def test_compaction_never_loses_a_row_written_while_it_runs(tmp_path: Path) -> None:
    """A real second process writes part after part while this one compacts again and again."""
    run, n = tmp_path / "run", 300
    store = ResultsStore(run)
    store.write([new_row(WorkItem("r", "s1", "random", 0, 10), SCENE, "w", "v")])  # something to fold first
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(run), str(n)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    writer.stdin.write("go\n")
    writer.stdin.flush()
    folded_while_writing = 0
    while writer.poll() is None:
        had = len(ResultsStore(run).parts())
        ResultsStore(run).compact()
        folded_while_writing += had > 0 and writer.poll() is None
    assert writer.returncode == 0
    assert folded_while_writing >= 3, "compaction should have run several times while parts were being written"
    ResultsStore(run).compact()
    frame = ResultsStore(run).read()
    assert sorted(frame.loc[frame["scene_id"] == "s0", "trial"]) == list(range(n))
    assert (frame["scene_id"] == "s1").sum() == 1 and not ResultsStore(run).parts()
