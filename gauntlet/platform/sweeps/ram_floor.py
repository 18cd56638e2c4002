"""A RAM floor: stop a piece of work before the host's kernel OOM-killer has to.

`RamFloorWatcher` samples, every `interval_s`, the host's available memory and the resident memory
of a process tree (the watched pids and all their descendants). The work is stopped when

- available memory is within `margin_bytes` of the floor, or
- the recent rate at which memory is disappearing (host available falling, or the tree's RSS
  growing, whichever is faster) would carry available memory below the floor before the watcher
  could look again and act (`lookahead_s`, two sampling intervals by default).

Available memory is taken as the lower of the host's figure and its figure at the start minus the
tree's RSS growth since then: the host's number can lag, or be masked by other processes freeing
memory at the same time. Host-available memory is needed because the work's memory is not always
in the tree: Ray actors and Serve replicas started by a trial are children of the raylet, not of the trial.

Stopping means: the watched tree is killed (descendants of this process; other roots with their
descendants), the thread that entered the context gets `RamFloorExceeded` raised into it (Python
delivers it at the next bytecode, so a thread blocked in C sees it when the call returns, which the
kill usually hastens), and leaving the context raises `RamFloorExceeded` with the observed numbers.

    with RamFloorWatcher(floor_bytes=2 * GB, pids=[proc.pid]) as watcher:
        proc.wait()
    watcher.stats.peak_tree_rss_bytes, watcher.stats.min_available_bytes

Nothing here allocates: the test that proves it stops an allocating process keeps its allocations
well under a gigabyte and its floor relative to the memory available at the time.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

MB = 2**20
GB = 2**30


@dataclass
class MemoryStats:
    """What the watcher saw while the context was open (updated on every sample)."""

    samples: int = 0  # how many samples were taken
    min_available_bytes: int = 0  # lowest host available memory seen
    peak_tree_rss_bytes: int = 0  # highest RSS summed over the watched process tree
    peak_tree_processes: int = 0  # most processes in the tree at once
    start_available_bytes: int = 0  # host available memory at the first sample
    start_tree_rss_bytes: int = 0  # the tree's RSS at the first sample

    def as_row(self) -> dict[str, float]:
        """Megabyte numbers for a results table."""
        return {"min_available_mb": self.min_available_bytes / MB, "peak_tree_rss_mb": self.peak_tree_rss_bytes / MB,
                "tree_growth_mb": max(0, self.peak_tree_rss_bytes - self.start_tree_rss_bytes) / MB}


@dataclass(frozen=True)
class RamFloorBreach:
    """The sample that tripped the floor."""

    floor_bytes: int  # the floor that was guarded
    available_bytes: int  # host available memory at the breach
    tree_rss_bytes: int  # watched tree's RSS at the breach
    decline_bytes_per_s: float  # how fast memory was disappearing (max of host and tree)
    projected_available_bytes: float  # available memory expected at the next look
    why: str  # "margin" (already too close) or "projection" (about to cross)
    elapsed_s: float  # seconds since the watcher started

    def describe(self) -> str:
        return (f"RAM floor {self.floor_bytes / GB:.2f} GB: available {self.available_bytes / GB:.2f} GB, "
                f"projected {self.projected_available_bytes / GB:.2f} GB at the next look "
                f"(memory shrinking {self.decline_bytes_per_s / MB:.0f} MB/s, watched tree RSS "
                f"{self.tree_rss_bytes / MB:.0f} MB), stopped after {self.elapsed_s:.1f} s ({self.why})")


class RamFloorExceeded(RuntimeError):
    """The watched work was stopped because host memory was about to fall below the floor."""

    def __init__(self, breach: RamFloorBreach | None = None, stats: MemoryStats | None = None):
        # Ray re-raises exceptions by re-constructing them; both arguments are optional for that.
        self.breach = breach
        self.stats = stats
        super().__init__(breach.describe() if breach else "RAM floor exceeded")


def process_tree(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes `pids` and all their live descendants (each once)."""
    seen: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:  # gone already
            continue
        for proc in members:
            seen.setdefault(proc.pid, proc)
    return list(seen.values())


def tree_rss_bytes(processes: Iterable[psutil.Process]) -> int:
    total = 0
    for proc in processes:
        try:
            total += proc.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            pass
    return total


# Ray's own daemons. A driver that started Ray (`ray.init()` in a script, a test session) is their
# parent, so they sit in its process tree; killing them would take down the very cluster a RAM floor
# is there to protect, so they are never victims.
RAY_DAEMONS = frozenset({"gcs_server", "raylet", "plasma_store", "redis-server", "dashboard_agent",
                         "runtime_env_agent", "log_monitor", "monitor", "dashboard"})


def _is_ray_daemon(proc: psutil.Process) -> bool:
    try:
        name = proc.name()
        cmd = " ".join(proc.cmdline()[:2])
    except psutil.Error:
        return False
    return name in RAY_DAEMONS or any(f"ray/{d}" in cmd or f"/{d}.py" in cmd for d in RAY_DAEMONS)


def kill_tree(pids: Iterable[int], spare: int | None = None) -> int:
    """SIGKILLs `pids` and their descendants, except `spare` (the caller's own process) and Ray's
    daemons. Returns the count."""
    tree = process_tree(pids)
    # Ray's daemons and everything under them (its workers, actors, replicas) belong to Ray.
    protected: set[int] = set()
    for proc in tree:
        if _is_ray_daemon(proc):
            protected.add(proc.pid)
            try:
                protected.update(c.pid for c in proc.children(recursive=True))
            except psutil.Error:
                pass
    victims = [p for p in tree if p.pid != spare and p.pid not in protected]
    count = len(victims)
    for proc in victims:
        try:
            proc.kill()
        except psutil.Error:
            pass
    # Wait until they are gone without reaping them (psutil.wait_procs would reap our own children
    # and rob their Popen of the exit status).
    deadline = time.monotonic() + 2.0
    while victims and time.monotonic() < deadline:
        victims = [p for p in victims if _alive(p)]
        time.sleep(0.01)
    return count


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Schedules `exc_type` in another thread (None clears a scheduled one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc_type) if exc_type else None)


@dataclass
class RamFloorWatcher:
    """Context manager: watches host memory and a process tree; stops the work before the floor.

    `pids` are the roots of the watched tree (default: this process); a callable is re-evaluated on
    every sample, for trees whose root appears later. On a breach the tree is killed (never this
    process itself), `on_breach` is called with the breach, and, with `interrupt`, the thread that
    entered the context is interrupted with `RamFloorExceeded`. Leaving the context after a breach
    raises `RamFloorExceeded` (with `.breach` and `.stats`) instead of whatever the killed work raised.
    """

    floor_bytes: int  # host available memory must stay above this
    pids: Iterable[int] | Callable[[], Iterable[int]] | None = None  # tree roots; None = this process
    interval_s: float = 0.05  # sampling period; a fast allocator gains ~rate*interval between looks
    margin_bytes: int = 128 * MB  # stop once available memory is this close to the floor
    lookahead_s: float | None = None  # projection horizon; None = two sampling intervals
    kill: bool = True  # kill the watched tree on a breach
    interrupt: bool = True  # raise RamFloorExceeded in the entering thread on a breach
    on_breach: Callable[[RamFloorBreach], Any] | None = None  # extra action (e.g. tear down a Serve app)
    stats: MemoryStats = field(default_factory=MemoryStats, init=False)
    breach: RamFloorBreach | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.floor_bytes < 0:
            raise ValueError(f"floor_bytes must be >= 0, got {self.floor_bytes}")
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        self._stop = threading.Event()
        self._tripped = threading.Event()
        self._lock = threading.Lock()
        self._active = False
        self._interrupted = False
        self._thread: threading.Thread | None = None
        self._target_thread = 0

    @property
    def tripped(self) -> bool:
        """True once the floor was breached (cheap: poll it between units of work)."""
        return self._tripped.is_set()

    def check(self) -> None:
        """Raises RamFloorExceeded if the floor was breached (a cooperative stop point)."""
        if self.breach is not None:
            raise RamFloorExceeded(self.breach, self.stats)

    def _roots(self) -> list[int]:
        pids = self.pids() if callable(self.pids) else self.pids
        return [os.getpid()] if pids is None else [int(p) for p in pids]

    def __enter__(self) -> RamFloorWatcher:
        self._target_thread = threading.get_ident()
        self._active = True
        self._t0 = time.monotonic()
        self._sample()  # a floor already breached trips before any work starts
        if self.breach is not None:
            self._active = False
            raise RamFloorExceeded(self.breach, self.stats)
        self._thread = threading.Thread(target=self._run, name="ram-floor-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            self._shutdown()
        except RamFloorExceeded:  # the interrupt landed here rather than in the work: same outcome
            self._shutdown()
        if self.breach is not None:
            raise RamFloorExceeded(self.breach, self.stats) from (
                None if exc is None or isinstance(exc, RamFloorExceeded) else exc)
        return False

    def _shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            self._active = False
            if self._interrupted:
                _raise_in_thread(self._target_thread, None)  # never deliver it after the context
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._sample():
                return

    def _sample(self) -> bool:
        """One look; True if it tripped the floor."""
        now = time.monotonic()
        available = psutil.virtual_memory().available
        tree = process_tree(self._roots())
        rss = tree_rss_bytes(tree)
        s = self.stats
        if s.samples == 0:
            s.start_available_bytes = s.min_available_bytes = available
            s.start_tree_rss_bytes = rss
        # The host figure can lag the tree's own growth, or hide it while other processes free
        # memory; what the tree grew by since the start was taken from the host either way.
        available = min(available, s.start_available_bytes - max(0, rss - s.start_tree_rss_bytes))
        s.samples += 1
        s.min_available_bytes = min(s.min_available_bytes, available)
        s.peak_tree_rss_bytes = max(s.peak_tree_rss_bytes, rss)
        s.peak_tree_processes = max(s.peak_tree_processes, len(tree))
        decline = 0.0
        last = getattr(self, "_last", None)
        if last is not None and now > last[0]:
            dt = now - last[0]
            decline = max(0.0, (last[1] - available) / dt, (rss - last[2]) / dt)
        self._last = (now, available, rss)
        lookahead = self.lookahead_s if self.lookahead_s is not None else 2 * self.interval_s
        projected = available - decline * lookahead
        if available - self.floor_bytes < self.margin_bytes:
            why = "margin"
        elif projected < self.floor_bytes:
            why = "projection"
        else:
            return False
        self.breach = RamFloorBreach(
            floor_bytes=self.floor_bytes, available_bytes=available, tree_rss_bytes=rss,
            decline_bytes_per_s=decline, projected_available_bytes=projected, why=why, elapsed_s=now - self._t0,
        )
        self._tripped.set()
        self._act()
        return True

    def _act(self) -> None:
        if self.kill:
            kill_tree(self._roots(), spare=os.getpid())
        if self.on_breach is not None:
            try:
                self.on_breach(self.breach)
            except Exception:  # noqa: BLE001 - the stop itself must still happen
                pass
        with self._lock:
            if self.interrupt and self._active and self._target_thread != threading.get_ident():
                self._interrupted = True
                _raise_in_thread(self._target_thread, RamFloorExceeded)


def breach_row(breach: RamFloorBreach | None) -> dict[str, Any]:
    """Flat numbers of a breach for a results table (empty without one)."""
    if breach is None:
        return {}
    row = asdict(breach)
    return {"breach_available_mb": row["available_bytes"] / MB, "breach_tree_rss_mb": row["tree_rss_bytes"] / MB,
            "breach_decline_mb_per_s": row["decline_bytes_per_s"] / MB}
