"""The one Ray Train worker loop of `gauntlet train`, whatever the policy family and framework.

Every worker: sets up its framework (a backend: JAX or torch, as the family's recipe says), builds
the policy, restores the latest training checkpoint if Ray Train hands one over, then runs the
steps. A step draws this worker's raw batch, lets the policy prepare it (`prepare_train_batch`),
and lets the backend take one optimizer step on the policy's own loss (`train_loss`). Every number
that decides a step is a function of (seed, step, rank), so a run resumed from a checkpoint repeats
the uninterrupted run's loss trajectory. `StepReporter` logs, records and reports each step and
asks the backend to write a checkpoint when one is due.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gauntlet.platform.train.recipes import WorkerContext

if TYPE_CHECKING:
    from gauntlet.platform.train.config import TrainConfig
    from gauntlet.platform.train.preflight import Preflight
    from gauntlet.platform.train.recipes import TrainRecipe
    from gauntlet.policies.base import TrainablePolicy

# Trainer kind (a recipe's `trainer`) -> the module with its backend (see BackendModule).
BACKENDS = {"jax": "gauntlet.platform.train.backend_jax", "torch": "gauntlet.platform.train.backend_torch"}


@dataclass(frozen=True)
class StepMetrics:
    """What one optimizer step reports."""

    loss: float  # mean over the workers
    grad_norm: float  # global gradient norm before clipping
    learning_rate: float  # the rate this step used


class Backend(Protocol):
    """One framework's half of a worker: optimizer state, a step, checkpoints."""

    def restore(self, directory: Path) -> tuple[int, list[dict[str, Any]]]:
        """Load a training checkpoint; returns (steps taken, loss history up to there)."""
        ...

    def step(self, batch: dict[str, np.ndarray], step: int) -> StepMetrics:
        """One optimizer step on this worker's prepared batch (0-based `step`)."""
        ...

    def save(self, directory: Path, steps_taken: int, history: list[dict[str, Any]]) -> None:
        """Write a training checkpoint into `directory` (rank 0 only)."""
        ...

    def param_digest(self) -> str:
        """`digest_arrays` of the trained parameters as this worker holds them now."""
        ...

    def eval_loss(self, batch: dict[str, np.ndarray]) -> float:
        """The loss of a prepared batch under the current weights, without a step (validation)."""
        ...


class BackendModule(Protocol):
    """What a backend module provides (a module, so that importing it can wait for `setup_process`)."""

    def setup_process(self, cfg: TrainConfig, worker: WorkerContext) -> None:
        """Before the framework is imported in this worker process (device choice, collectives)."""
        ...

    def open_backend(self, cfg: TrainConfig, pre: Preflight, policy: TrainablePolicy,
                     worker: WorkerContext) -> Backend:
        ...

    def ray_trainer(self, loop: Any, loop_config: dict[str, Any], scaling: Any, run_config: Any,
                    cfg: TrainConfig) -> Any:
        """The Ray Train trainer that runs `loop` on this framework's worker group."""
        ...


def backend_module(kind: str) -> BackendModule:
    return importlib.import_module(BACKENDS[kind])  # type: ignore[return-value]


def digest_arrays(arrays: Iterable[np.ndarray]) -> str:
    """SHA-256 of the arrays' bytes, in order: equal on two workers only if every value is bit-equal."""
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


class DigestLog:
    """`--param-digests`: one line per step in `workers/rankR.digests.jsonl`, {step, params, batch, pid,
    node_id}. Ranks draw different batches; after the gradient all-reduce their parameters must still be equal."""

    def __init__(self, train_dir: Path, rank: int, node_id: str):
        self.path = train_dir / "workers" / f"rank{rank}.digests.jsonl"
        self.node_id = node_id

    def append(self, step: int, backend: Backend, batch: dict[str, np.ndarray]) -> None:
        record = {"step": step + 1, "params": backend.param_digest(),
                  "batch": digest_arrays(batch[k] for k in sorted(batch)), "pid": os.getpid(),
                  "node_id": self.node_id}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def record_worker(train_dir: Path, worker: WorkerContext) -> str:
    """Writes `workers/rankR.json` (pid, rank, world, node address and id), where whoever watches the run
    (and the failure-recovery tests) finds each rank's process; returns this worker's node id."""
    import ray

    from gauntlet.runtime.manifests import write_json

    node_id = ray.get_runtime_context().get_node_id()
    write_json(train_dir / "workers" / f"rank{worker.rank}.json", {
        "pid": os.getpid(), "rank": worker.rank, "world": worker.world, "node": ray.util.get_node_ip_address(),
        "node_id": node_id})
    return node_id


def validation(cfg: TrainConfig, pre: Preflight, recipe: TrainRecipe, policy: TrainablePolicy,
               backend: Backend) -> Callable[[], dict[str, float]] | None:
    """--val-episodes: what each report adds, {"val_loss": mean loss of the held-out batches}; None without.
    The batches are prepared once, with fixed generators, so every report measures the same inputs."""
    if not cfg.val_episodes:
        return None
    from gauntlet.data.dataset_format import Dataset
    from gauntlet.platform.train.recipes import training_episodes

    held_out = training_episodes(cfg, Dataset(pre.identity["dataset"]))[1]
    raw = recipe.validation_batches(cfg, pre, policy, held_out)
    batches = [policy.prepare_train_batch(b, np.random.default_rng([cfg.seed, i])) for i, b in enumerate(raw)]
    return lambda: {"val_loss": float(np.mean([backend.eval_loss(b) for b in batches]))}


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every report at INFO, its whole metrics dict (every step since the last report),
    through "ray.train" and through a logger named by its context module's file path; the job log
    should show Gauntlet's progress lines instead."""
    import logging

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: its report lines stay
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop(loop_config: dict[str, Any]) -> None:
    """The Ray Train entry point: loop_config = {"config", "preflight", "train_dir"} (plain data)."""
    import ray.train

    from gauntlet.platform.train.config import TrainConfig
    from gauntlet.platform.train.preflight import Preflight
    from gauntlet.platform.train.recipes import get_recipe
    from gauntlet.platform.train.reporting import StepReporter

    _quiet_ray_train_reports()
    cfg, pre = TrainConfig(**loop_config["config"]), Preflight(**loop_config["preflight"])
    train_dir = Path(loop_config["train_dir"])
    ctx = ray.train.get_context()
    worker = WorkerContext(ctx.get_world_rank(), ctx.get_world_size(),
                           single_node=ctx.get_local_world_size() == ctx.get_world_size())
    recipe = get_recipe(cfg.policy)
    backends = backend_module(recipe.trainer)
    backends.setup_process(cfg, worker)
    node_id = record_worker(train_dir, worker)

    policy = recipe.build_policy(cfg, pre)
    backend = backends.open_backend(cfg, pre, policy, worker)
    start, history, resumed = 0, [], False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start, history = backend.restore(Path(d))
        resumed = True
    reporter = StepReporter(cfg, train_dir, worker.rank, worker.world, start, history, resumed=resumed)
    digests = DigestLog(train_dir, worker.rank, node_id) if cfg.param_digests else None
    if worker.rank == 0:
        message = (f"[train] rank 0/{worker.world} {f'resuming from step {start}' if resumed else 'starting'}; "
                   f"{cfg.steps} steps, {cfg.policy}, batch {cfg.batch_size} ({cfg.batch_per_worker}/worker), "
                   f"mode {pre.mode}")
        print(message, flush=True)

    measure = validation(cfg, pre, recipe, policy, backend)
    with recipe.open_batches(cfg, pre, policy, worker, start) as draw:
        for step in range(start, cfg.steps):
            rng = np.random.default_rng([cfg.seed, step, worker.rank])
            batch = policy.prepare_train_batch(draw(rng), rng)
            metrics = backend.step(batch, step)
            if digests is not None:
                digests.append(step, backend, batch)
            reporter.record(step, metrics.loss, metrics.grad_norm, metrics.learning_rate)
            if not np.isfinite(metrics.loss):
                raise FloatingPointError(f"loss became {metrics.loss} at step {step + 1}; the latest good "
                                         "checkpoint is kept")
            reporter.report(step, lambda d, s=step: backend.save(d, s + 1, reporter.history), measure)
