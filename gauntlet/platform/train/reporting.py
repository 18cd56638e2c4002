"""Per-step bookkeeping of the training worker loop (whatever the framework).

One `StepReporter` per worker: it turns a step's numbers into a metrics record (rates, peak memory,
the resume mark), keeps the history that checkpoints carry, appends rank 0's `metrics.jsonl`, prints
rank 0's progress line, and hands Ray Train its reports, batched `report_every` steps per report
(a report is a barrier across workers) with a checkpoint on the steps that are due one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.runtime.atomic_files import atomic_write
from gauntlet.runtime.progress import format_duration

if TYPE_CHECKING:
    from gauntlet.platform.train.config import TrainConfig


def peak_memory_mb() -> float:
    """Peak accelerator bytes in use when JAX has an accelerator, else this process's peak RSS."""
    import sys

    if "jax" in sys.modules:
        try:
            import jax

            dev = jax.local_devices()[0]
            if dev.platform != "cpu":
                return float((dev.memory_stats() or {}).get("peak_bytes_in_use", 0)) / 2**20
        except Exception:  # noqa: BLE001 - no accelerator runtime: host memory it is
            pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def rewrite_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl = the checkpoint's history: steps after the checkpoint (lost with the failed
    attempt) are dropped, so the file never shows a step twice."""
    text = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def checkpoint_due(cfg: TrainConfig, step: int) -> bool:
    """Whether 0-based `step` ends with a checkpoint (every --checkpoint-every steps, and the last)."""
    return (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps


def report_steps(cfg: TrainConfig) -> list[int]:
    """The 1-based steps after which a run reports to Ray Train: every --report-every steps since the
    last report, and every checkpoint. A restart resumes from a checkpoint, which is a report, so an
    interrupted run reports at the same steps as an uninterrupted one."""
    steps, unreported = [], 0
    for step in range(cfg.steps):
        unreported += 1
        if checkpoint_due(cfg, step) or unreported >= cfg.report_every:
            steps.append(step + 1)
            unreported = 0
    return steps


class StepReporter:
    """Records, logs and reports the steps of one worker (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, train_dir: Path, rank: int, world: int, start: int,
                 history: list[dict[str, Any]], resumed: bool):
        self.cfg = cfg
        self.metrics_path = train_dir / "metrics.jsonl"
        self.rank, self.world = rank, world
        self.start, self.total = start, cfg.steps
        self.history = history
        self.resumed = resumed
        self.t_start = self.t_last = time.perf_counter()
        self.unreported: list[dict[str, Any]] = []
        if rank == 0:
            rewrite_metrics(self.metrics_path, history)

    def record(self, step: int, loss: float, grad_norm: float, learning_rate: float) -> dict[str, Any]:
        """The record of 0-based `step`, appended to the history (and rank 0's metrics file)."""
        now = time.perf_counter()
        dt = max(now - self.t_last, 1e-9)
        batch = self.cfg.batch_size
        record: dict[str, Any] = {
            "step": step + 1, "loss": loss, "grad_norm": grad_norm, "learning_rate": learning_rate,
            "steps_per_s": 1.0 / dt, "samples_per_s": batch / dt, "samples_per_s_per_worker": batch / self.world / dt,
            "peak_memory_mb": peak_memory_mb(), "workers": self.world,
        }
        if self.resumed and step == self.start:
            record["resumed"] = True
        self.t_last = now
        self.history.append(record)
        if self.rank == 0:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if (step + 1) % self.cfg.log_every == 0 or step + 1 == self.total or step == self.start:
                self._print_progress(step, now, loss, learning_rate)
        self.unreported.append({k: v for k, v in record.items() if not isinstance(v, bool)})
        return record

    def _print_progress(self, step: int, now: float, loss: float, learning_rate: float) -> None:
        rate = (step + 1 - self.start) / max(now - self.t_start, 1e-9)
        eta = (self.total - step - 1) / rate if rate > 0 else float("inf")
        message = (f"[train] step {step + 1}/{self.total} ({100 * (step + 1) / self.total:.0f}%) "
                   f"loss {loss:.4f} | {rate:.2f} steps/s, {rate * self.cfg.batch_size / self.world:.1f} "
                   f"samples/s/worker | lr {learning_rate:.2e} | ETA {format_duration(eta)}")
        print(message, flush=True)

    def report(self, step: int, write_checkpoint: Callable[[Path], None],
               measure: Callable[[], dict[str, float]] | None = None) -> None:
        """Report to Ray Train when a report or a checkpoint is due after 0-based `step`; on a
        checkpoint step rank 0 calls `write_checkpoint(directory)` and Ray Train copies it. `measure`
        (e.g. the validation loss) is called only when a report is made; its numbers join the report."""
        import ray.train

        due = checkpoint_due(self.cfg, step)
        if not due and len(self.unreported) < self.cfg.report_every:
            return
        # Top-level keys: the latest step; "steps": every step since the last report, so Ray Train
        # sees each step's metrics even when reports are batched (--report-every).
        metrics = {**self.unreported[-1], **(measure() if measure else {}), "steps": self.unreported}
        self.unreported = []
        if not due:
            ray.train.report(metrics)
            return
        ckpt_dir = None
        if self.rank == 0:
            ckpt_dir = Path(tempfile.mkdtemp(prefix="gauntlet-train-ckpt-"))
            write_checkpoint(ckpt_dir)
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None)
        finally:
            if ckpt_dir is not None:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
