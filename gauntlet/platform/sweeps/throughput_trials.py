"""One throughput trial: measure a configuration of the loader or of an evaluation under a RAM floor.

`throughput_trainable` is the Ray Tune function; it opens a `RamFloorWatcher` on its own process
tree (and the host's available memory), runs the target's measurement and reports one row: the
knobs, `status` (ok / ram_floor / error), `reason`, the metric and the memory it saw. A trial that
breaks the floor is stopped from inside, its children killed, and the sweep goes on.

Targets:
- `LoaderTarget`: samples/s of a training loader built by a factory `knobs -> loader` (an iterable
  of dict batches; closable or a context manager). `measure_loader` is the measurement, generic so a
  toy loader can stand in for the real one.
- `EvalTarget`: episodes/min and mean batch size of a short real evaluation. The evaluation runs as
  its own Ray driver (`python -m gauntlet.platform.eval`, connected to this cluster), a child of the
  trial: the watcher can kill it, and Ray then reclaims the rollout actors it owned. Its Serve app is
  deleted after a stopped or failed run so that the next trial starts clean.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from gauntlet.deployments.app import EVAL_APP
from gauntlet.keys import ACTION_FEATURE, ACTIONS_KEY
from gauntlet.platform.eval.status import EvalStatus, StatusError, read_serving_stats
from gauntlet.platform.sweeps.ram_floor import MB, RamFloorExceeded, RamFloorWatcher, breach_row, kill_tree
from gauntlet.policies.vla.config import DEFAULT_PRESET

STATUS_OK = "ok"
STATUS_RAM_FLOOR = "ram_floor"
STATUS_ERROR = "error"


class TrialError(RuntimeError):
    """A measurement could not be made; the message is the trial's reason."""


class ThroughputTarget(Protocol):
    """What a sweep measures: `run(knobs, trial_index, watcher)` -> metric columns (incl. `metric`)."""

    metric: str  # the column the sweep maximises

    def run(self, knobs: Mapping[str, Any], trial_index: int, watcher: RamFloorWatcher | None = None
            ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RamLimits:
    """The RAM floor every trial runs under."""

    floor_bytes: int  # host available memory must stay above this
    margin_bytes: int  # stop this close to the floor
    interval_s: float  # watcher sampling period
    headroom_bytes: int = 0  # > 0: a trial's floor is at least (available at its start - this)

    def floor_for_trial(self) -> int:
        """The floor one trial runs under: the sweep's floor, raised by the per-trial headroom if set."""
        if not self.headroom_bytes:
            return self.floor_bytes
        import psutil

        return max(self.floor_bytes, psutil.virtual_memory().available - self.headroom_bytes)


# ----------------------------------------------------------------------------------- loader target

def batch_size_of(batch: Any) -> int:
    """Samples in one batch: len(batch["actions"]) (or of the first array of a dict batch)."""
    if isinstance(batch, Mapping):
        if ACTIONS_KEY in batch:
            return len(batch[ACTIONS_KEY])
        if ACTION_FEATURE in batch:
            return len(batch[ACTION_FEATURE])
        first = next(iter(batch.values()), None)
        return len(first) if first is not None else 0
    return len(batch)


def _endless(loader: Any) -> Iterator[Any]:
    """Batches across epochs; stops quietly when a new epoch yields nothing after one that did."""
    epoch = 0
    while True:
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            if epoch == 0:
                raise TrialError("the loader yielded no batches (dataset empty, or smaller than one batch?)")
            return
        epoch += 1


def measure_loader(factory: Callable[[Mapping[str, Any]], Any], knobs: Mapping[str, Any],
                   warmup_batches: int = 3, measure_s: float = 5.0,
                   stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Samples/s of `factory(knobs)` after `warmup_batches`, over about `measure_s` seconds.

    The loader is created, warmed up (worker start-up and first decodes are not the steady state),
    then timed; epochs wrap. `stop` is polled between batches (e.g. a RAM watcher's `tripped`).
    """
    created = time.monotonic()
    loader = factory(knobs)
    entered = loader.__enter__() if hasattr(loader, "__enter__") else loader
    try:
        batches = _endless(entered)
        first_batch_s = math.nan
        for i in range(warmup_batches):
            if next(batches, None) is None:
                raise TrialError(f"the loader ran out during warm-up ({i} of {warmup_batches} batches)")
            if i == 0:
                first_batch_s = time.monotonic() - created
            if stop is not None and stop():
                raise TrialError("stopped during warm-up")
        samples = n_batches = 0
        start = time.monotonic()
        while True:
            batch = next(batches, None)
            if batch is None:
                break  # a one-shot loader ran dry: measure what it gave
            samples += batch_size_of(batch)
            n_batches += 1
            if stop is not None and stop():
                raise TrialError("stopped while measuring")
            if time.monotonic() - start >= measure_s:
                break
        elapsed = time.monotonic() - start
    finally:
        if hasattr(loader, "__exit__"):
            loader.__exit__(None, None, None)
        elif hasattr(loader, "close"):
            loader.close()
    if n_batches == 0:
        raise TrialError("no batches left to measure after warm-up (dataset too small?)")
    return {"samples_per_s": samples / elapsed, "batches_per_s": n_batches / elapsed, "samples": samples,
            "batches": n_batches, "measured_s": elapsed, "first_batch_s": first_batch_s}


@dataclass(frozen=True)
class RealLoaderFactory:
    """`knobs -> loader` for gauntlet.data.loader: DatasetLoader(dataset, LoaderConfig(**settings, **knobs))."""

    dataset: str  # dataset root
    # fixed LoaderConfig fields (not swept); endless epochs: an epoch boundary is not what is measured
    settings: tuple[tuple[str, Any], ...] = (("epochs", 0),)

    def __call__(self, knobs: Mapping[str, Any]) -> Any:
        config_cls, build = loader_api()
        names = {f.name for f in fields(config_cls)}
        values = dict(self.settings) | dict(knobs)
        unknown = sorted(set(values) - names)
        if unknown:
            raise TrialError(f"LoaderConfig has no field(s) {unknown}")
        return build(self.dataset, config_cls(**values))


def loader_api() -> tuple[type, Callable[[str, Any], Any]]:
    """(LoaderConfig, constructor(root, config)) of the training loader; ImportError if it is missing."""
    import importlib

    module = importlib.import_module("gauntlet.data.loader")
    config_cls = getattr(module, "LoaderConfig", None)
    build = getattr(module, "DatasetLoader", None)
    if config_cls is None or build is None:
        raise ImportError("gauntlet.data.loader has no LoaderConfig and DatasetLoader")
    return config_cls, build


@dataclass(frozen=True)
class LoaderTarget:
    """Samples/s of a loader built by `factory(knobs)`."""

    factory: Callable[[Mapping[str, Any]], Any]  # knobs -> loader (picklable: it travels to the trial)
    warmup_batches: int = 3  # batches before the clock starts
    measure_s: float = 5.0  # seconds measured
    metric: str = "samples_per_s"  # what the sweep maximises

    def run(self, knobs: Mapping[str, Any], trial_index: int, watcher: RamFloorWatcher | None = None
            ) -> dict[str, Any]:
        stop = (lambda: watcher.tripped) if watcher is not None else None
        return measure_loader(self.factory, knobs, self.warmup_batches, self.measure_s, stop)


# ------------------------------------------------------------------------------------- eval target

@dataclass(frozen=True)
class EvalTarget:
    """Episodes/min of a short evaluation with the knobs as its flags (actors, batching, replicas)."""

    scenes: str  # scene database (absolute path)
    policy: str  # NAME[=CHECKPOINT] deployed by each trial's evaluation
    runs_dir: str  # where each trial's run directory goes (absolute path)
    eval_trials: int = 1  # trials per scene
    horizon: int = 60  # steps per episode
    limit: int = 0  # at most this many scenes (0 = all)
    vla_size: str = DEFAULT_PRESET  # VLA preset for `vla` without a checkpoint
    actor_cpus: float = 1.0  # CPUs reserved per rollout actor
    timeout_s: float = 900.0  # a run longer than this is stopped and reported as an error
    metric: str = "episodes_per_min"  # what the sweep maximises

    def command(self, knobs: Mapping[str, Any], run_dir: Path) -> list[str]:
        args = [sys.executable, "-m", "gauntlet.platform.eval", "--scenes", self.scenes, "--policy", self.policy,
                "--out", str(run_dir), "--trials", str(self.eval_trials), "--horizon", str(self.horizon),
                "--limit", str(self.limit), "--vla-size", self.vla_size, "--actor-cpus", str(self.actor_cpus)]
        for name, value in knobs.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        return args

    def run(self, knobs: Mapping[str, Any], trial_index: int, watcher: RamFloorWatcher | None = None
            ) -> dict[str, Any]:
        import ray

        run_dir = Path(self.runs_dir) / f"trial-{trial_index:03d}"
        log_path = run_dir.with_suffix(".log")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The evaluation is a driver of its own on this trial's cluster: nested use of Ray from a
        # Tune trial without sharing the trial worker's job (and killable as one process tree).
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        started = time.monotonic()
        clean = False
        with open(log_path, "w") as log:
            proc = subprocess.Popen(self.command(knobs, run_dir), stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                try:
                    rc = proc.wait(timeout=self.timeout_s)
                except subprocess.TimeoutExpired:
                    raise TrialError(f"evaluation did not finish within {self.timeout_s:.0f} s "
                                     f"(actors waiting for CPUs? see {log_path})") from None
                clean = rc == 0
            finally:
                if proc.poll() is None:
                    kill_tree([proc.pid])
                    proc.wait(timeout=30)
                if not clean:
                    _delete_eval_app()
        wall_s = time.monotonic() - started
        if not clean:
            raise TrialError(f"evaluation exited with {proc.returncode}: {_last_line(log_path)} (log: {log_path})")
        return _read_eval_run(run_dir) | {"eval_wall_s": wall_s}


def _delete_eval_app() -> None:
    """Tears down the Serve app of a run that was killed (its finally never ran)."""
    try:
        from ray import serve

        if EVAL_APP in serve.status().applications:
            serve.delete(EVAL_APP)
    except Exception:  # noqa: BLE001 - best effort: Serve may not even be running
        pass


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


def _read_eval_run(run_dir: Path) -> dict[str, Any]:
    """episodes/min from the run's status, mean batch size from its serving stats."""
    try:
        status = EvalStatus.read(run_dir)
    except StatusError as exc:
        raise TrialError(str(exc)) from None
    if not status.finished:
        raise TrialError(f"{run_dir}: the evaluation did not finish (state {status.state!r})")
    row: dict[str, Any] = {"episodes_per_min": float(status.episodes_per_min), "episodes": int(status.done),
                           "skipped": int(status.skipped), "mean_batch_size": math.nan}
    serving = read_serving_stats(run_dir)
    if serving:
        stats = next(iter(serving.values()))
        row["mean_batch_size"] = float(stats.get("mean_batch_size", math.nan))
        row["max_batch_size_seen"] = int(stats.get("max_batch_size_seen", 0))
    return row


# ------------------------------------------------------------------------------------- trainable

def run_trial(target: ThroughputTarget, limits: RamLimits, knobs: Mapping[str, Any], trial_index: int) -> dict[str, Any]:
    """Runs one measurement under the RAM floor; never raises: failures are rows with a status."""
    row: dict[str, Any] = {"status": STATUS_OK, "reason": "", target.metric: math.nan}
    started = time.monotonic()
    floor = limits.floor_for_trial()
    watcher = RamFloorWatcher(floor, interval_s=limits.interval_s, margin_bytes=limits.margin_bytes)
    try:
        with watcher:
            row.update(target.run(knobs, trial_index, watcher))
    except RamFloorExceeded as exc:
        row.update(status=STATUS_RAM_FLOOR, reason=str(exc))
        row.update(breach_row(exc.breach))
    except Exception as exc:  # noqa: BLE001 - a failed trial is a row, the sweep goes on
        row.update(status=STATUS_ERROR, reason=f"{type(exc).__name__}: {exc}".strip()[:500])
    if row["status"] != STATUS_OK:
        row[target.metric] = math.nan
    row.update(watcher.stats.as_row())
    row.update(floor_mb=floor / MB, trial_s=time.monotonic() - started)
    return row


def throughput_trainable(config: dict[str, Any], target: ThroughputTarget, limits: RamLimits) -> None:
    """The Tune trainable: one configuration, one reported row."""
    from ray import tune

    row = run_trial(target, limits, config["knobs"], int(config["step"]["index"]))
    tune.report(row)
