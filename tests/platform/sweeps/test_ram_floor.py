"""RamFloorWatcher on real processes: it stops an allocating process before it crosses the floor.

Safe by construction: every floor is set relative to the memory available at that moment and no
test allocates more than 600 MB, whatever the watcher does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from gauntlet.platform.sweeps.ram_floor import MB, RamFloorExceeded, RamFloorWatcher, process_tree

STEP_MB = 20
LIMIT_MB = 600

# Allocates STEP_MB at a time (pages written, so they are resident), reporting each step, up to LIMIT_MB.
ALLOCATOR = f"""
import sys, time
held = []
for i in range({LIMIT_MB // STEP_MB}):
    held.append(b"x" * ({STEP_MB} * 2**20))
    print((i + 1) * {STEP_MB}, flush=True)
    time.sleep(0.03)
print("done", flush=True)
time.sleep(0.5)
"""


def _available() -> int:
    return psutil.virtual_memory().available


def test_stops_a_subprocess_that_allocates_past_the_floor() -> None:
    floor = _available() - 300 * MB
    proc = subprocess.Popen([sys.executable, "-c", ALLOCATOR], stdout=subprocess.PIPE, text=True)
    with pytest.raises(RamFloorExceeded) as info, RamFloorWatcher(floor, pids=[proc.pid], interval_s=0.05):
        proc.wait(timeout=60)
    proc.wait(timeout=10)  # the interrupt may have cut the first wait short, before reaping
    out = proc.stdout.read().split()
    assert proc.returncode == -9, "the watcher kills the tree it watches"
    assert "done" not in out and int(out[-1]) < LIMIT_MB, f"stopped too late: {out[-3:]}"
    breach, stats = info.value.breach, info.value.stats
    assert breach is not None and breach.floor_bytes == floor and breach.why in ("margin", "projection")
    assert stats.peak_tree_rss_bytes > 100 * MB and stats.min_available_bytes > floor
    assert "RAM floor" in str(info.value) and "available" in str(info.value)


def test_interrupts_work_in_the_entering_thread() -> None:
    floor = _available() - 300 * MB
    held: list[bytes] = []
    # kill=False: the tree here is the test process's, whose children may be a test session's Ray.
    with pytest.raises(RamFloorExceeded) as info, RamFloorWatcher(floor, interval_s=0.05, kill=False):
        for _ in range(LIMIT_MB // STEP_MB):
            held.append(b"x" * (STEP_MB * MB))
            time.sleep(0.03)
    allocated = len(held) * STEP_MB
    held.clear()
    assert allocated < LIMIT_MB and info.value.breach is not None
    assert not process_tree([]), "nothing is listed for no roots"


def test_a_floor_already_breached_stops_before_any_work() -> None:
    ran = []
    with pytest.raises(RamFloorExceeded, match="RAM floor"), RamFloorWatcher(_available() + 2**30):
        ran.append(1)
    assert not ran


def test_work_that_stays_clear_of_the_floor_is_left_alone() -> None:
    floor = _available() // 4
    proc = subprocess.Popen([sys.executable, "-c", "import time; x = b'x' * (10 * 2**20); time.sleep(0.4)"])
    with RamFloorWatcher(floor, pids=[proc.pid], interval_s=0.05) as watcher:
        proc.wait(timeout=30)
    assert proc.returncode == 0 and not watcher.tripped and watcher.breach is None
    assert watcher.stats.samples >= 3 and watcher.stats.peak_tree_rss_bytes >= 10 * MB
    assert watcher.stats.min_available_bytes > floor
    row = watcher.stats.as_row()
    assert row["peak_tree_rss_mb"] >= 10 and row["min_available_mb"] > floor / MB


def test_ray_daemons_are_never_killed(ray_session) -> None:
    """A driver's tree includes the Ray it started: a breach must not take the cluster down."""
    from gauntlet.platform.sweeps.ram_floor import kill_tree

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    daemons = [p for p in psutil.Process().children(recursive=True) if p.name() in ("gcs_server", "raylet")]
    assert daemons, "the session's Ray daemons are children of this process"
    killed = kill_tree([os.getpid()], spare=os.getpid())  # this process's whole tree, as a trial's would be
    child.wait(timeout=10)
    assert child.returncode == -9 and killed >= 1
    assert all(p.is_running() for p in daemons)
    import ray

    assert ray.get(ray.put(1)) == 1  # the cluster still answers


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="floor_bytes"):
        RamFloorWatcher(-1)
    with pytest.raises(ValueError, match="interval_s"):
        RamFloorWatcher(0, interval_s=0)
