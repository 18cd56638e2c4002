"""`gauntlet train --report-to tensorboard|wandb`: the per-step metrics, written by the driver.

The tracker lives in the driver process, not in the workers: one writer per run whatever `--workers`
is (N workers writing one W&B run or one event directory would clash), nothing to set up per worker,
and the run is finished properly even when a worker group dies and Ray Train restarts it. The
metrics reach it the way Ray Train already moves them: each `ray.train.report` carries every step
since the last one (`StepReporter`), Ray Train's controller hands each report to a `UserCallback`
(on the driver's node), and the callback forwards rank 0's steps through a Ray queue to a thread of
the driver, which logs them as they arrive (every `--report-every` steps).
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from gauntlet.platform.train.config import TrainConfigError
from gauntlet.runtime.tracking import NullTracker, Tracker, TrackingError, open_tracker

if TYPE_CHECKING:
    from gauntlet.platform.train.config import TrainConfig
    from gauntlet.platform.train.preflight import Preflight

# Step record keys (reporting.StepReporter.record) logged as train/<key>
TRAIN_SCALARS = ("loss", "grad_norm", "learning_rate", "steps_per_s", "samples_per_s", "samples_per_s_per_worker",
                 "peak_memory_mb")


def forward_reports(queue: Any) -> Any:
    """A Ray Train callback putting each report's step records (rank 0's) on `queue`."""
    from ray.train import UserCallback

    class ForwardReports(UserCallback):
        def __init__(self, queue: Any) -> None:
            self.queue = queue

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics:  # metrics[i] is worker i's report; every rank reports the same mean loss
                self.queue.put(list(metrics[0].get("steps") or [metrics[0]]))

    return ForwardReports(queue)


class LiveTraining:
    """With-block around a training run: opens the tracker, hands Ray Train its callbacks, logs the
    forwarded steps as they arrive, and closes the tracker whatever happens."""

    def __init__(self, cfg: TrainConfig, pre: Preflight):
        self.cfg, self.pre = cfg, pre
        self.tracker: Tracker = NullTracker()
        self.callbacks: list[Any] = []
        self._queue: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_step = 0  # highest step logged: a restarted worker group repeats steps after its checkpoint

    def __enter__(self) -> LiveTraining:
        if self.cfg.report_to == "none":
            return self
        try:
            self.tracker = open_tracker(self.cfg.report_to, self.cfg.train_dir, name=self.cfg.name, job_type="train",
                                        config={**asdict(self.cfg), "mode_resolved": self.pre.mode})
        except TrackingError as exc:
            raise TrainConfigError(str(exc)) from None
        from ray.util.queue import Queue

        self._queue = Queue(actor_options={"num_cpus": 0})
        self.callbacks = [forward_reports(self._queue)]
        self._thread = threading.Thread(target=self._pump, name="gauntlet-train-tracking", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                rows = self._queue.get(timeout=0.5)
            except Empty:
                continue
            try:
                self._log(rows)
            except Exception as exc:  # noqa: BLE001 - a failing tracker never stops the training
                print(f"[train] --report-to {self.tracker.kind}: logging stopped ({type(exc).__name__}: {exc}); "
                      "training goes on", flush=True)
                self.tracker = NullTracker()

    def _log(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            step = int(row.get("step", 0))
            if step <= self.last_step:
                continue
            self.tracker.log_scalars(step, {f"train/{k}": row[k] for k in TRAIN_SCALARS if k in row})
            self.last_step = step

    def finish(self, summary: dict[str, Any]) -> None:
        """The run's summary as a table (after the last steps are logged)."""
        self._drain()
        keys = ("out", "mode", "steps", "first_loss", "final_loss", "loss_plot", "serve")
        self.tracker.log_table("train/summary", [{k: summary.get(k) for k in keys}])

    def _drain(self) -> None:
        """Stops the thread, then logs whatever is still queued (the reports of the last steps)."""
        if self._thread is None:
            return
        from ray.util.queue import Empty

        self._stop.set()
        self._thread.join()
        self._thread = None
        while True:
            try:
                self._log(self._queue.get_nowait())
            except Empty:
                break

    def __exit__(self, *exc: Any) -> None:
        try:
            self._drain()
        finally:
            if self._queue is not None:
                self._queue.shutdown()
                self._queue = None
            self.tracker.close()
