"""The JAX half of a training worker: optax state over a trainable/frozen split, a mesh, checkpoints.

Data parallelism: every worker holds the whole (replicated) train state and its own shard of each
global batch. With more than one worker the processes form one JAX distributed system (on CPU via
Gloo collectives, which Ray Train's JaxConfig only sets up for TPU/GPU, so this module does it);
the batch is a global array sharded over a 1-D "data" mesh and the jitted step's gradient mean is
an all-reduce that XLA inserts.

Checkpoints (rank 0) are `state_io` train states: trainable params, optimizer leaves, EMA and the
loss history. JAX is imported only after `setup_process` chose the platform.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.platform.train.recipes import WorkerContext
from gauntlet.platform.train.worker import StepMetrics, digest_arrays

if TYPE_CHECKING:
    from gauntlet.platform.train.config import TrainConfig
    from gauntlet.platform.train.preflight import Preflight
    from gauntlet.policies.base import TrainablePolicy


def setup_process(cfg: TrainConfig, worker: WorkerContext) -> None:
    """CPU unless --use-gpu (before JAX is imported here), then jax.distributed over Gloo for CPU
    workers (GPU/TPU: Ray Train's JaxConfig already did it)."""
    if not cfg.use_gpu:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import ray.util
    from ray.train.collective import broadcast_from_rank_zero

    if worker.world <= 1 or jax.distributed.is_initialized():
        return
    address = None
    if worker.rank == 0:
        host = "127.0.0.1" if worker.single_node else ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((host, 0))
            address = f"{host}:{s.getsockname()[1]}"
    address = broadcast_from_rank_zero(address)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=worker.world, process_id=worker.rank)


def lr_schedule(cfg: TrainConfig) -> Any:
    """Linear warmup from 1% to the peak, then constant or cosine decay to 10% (--decay-steps)."""
    import optax

    peak, warmup, decay = cfg.learning_rate, max(int(cfg.warmup_steps), 1), int(cfg.decay_steps)
    tail = optax.cosine_decay_schedule(peak, decay, alpha=0.1) if decay else optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(peak * 0.01, peak, warmup), tail], [warmup])


class JaxBackend:
    """AdamW (clipped) on the policy's trainable tree, optional EMA, replicated over the workers."""

    def __init__(self, cfg: TrainConfig, pre: Preflight, policy: TrainablePolicy, worker: WorkerContext):
        import jax
        import optax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from gauntlet.policies.vla.train import init_train_state, make_loss_step

        self.cfg, self.identity, self.world = cfg, pre.identity, worker.world
        self.schedule = lr_schedule(cfg)
        optimizer = optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                                optax.adamw(self.schedule, weight_decay=cfg.weight_decay))
        self.state = init_train_state(policy.train_weights(pre.mode, cfg.adapter_seed), pre.mode, optimizer)
        self.ema = jax.tree_util.tree_map(lambda x: x, self.state.trainable) if cfg.ema_decay > 0 else None
        self.step_fn = make_loss_step(policy.train_loss, optimizer)
        self.eval_fn = jax.jit(lambda state, batch: policy.train_loss({**state.frozen, **state.trainable}, batch))
        self.ema_fn = jax.jit(lambda e, p, d: jax.tree_util.tree_map(lambda a, b: d * a + (1 - d) * b, e, p))
        # Replicated state, batch sharded over the data axis: XLA all-reduces the gradient mean.
        mesh = Mesh(np.array(jax.devices()), ("data",))
        self.replicated, self.sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
        self.placed = worker.world == 1  # global arrays are made at the first step, after a restore

    def _to_global(self, tree: Any, sharding: Any) -> Any:
        import jax

        return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

    def restore(self, directory: Path) -> tuple[int, list[dict[str, Any]]]:
        import jax

        from gauntlet.platform.train.state_io import check_compatible, load_train_state
        from gauntlet.policies.checkpoints import tree_shapes

        saved = load_train_state(directory)
        opt_leaves, opt_def = jax.tree_util.tree_flatten(self.state.opt_state)
        check_compatible(saved, tree_shapes(self.state.trainable), [np.shape(x) for x in opt_leaves],
                         self.identity, directory)
        self.state = self.state.replace(
            step=jax.numpy.asarray(saved.step, jax.numpy.int32), trainable=saved.trainable,
            opt_state=jax.tree_util.tree_unflatten(opt_def, [jax.numpy.asarray(x) for x in saved.opt_leaves]),
        )
        self.ema = saved.ema if self.ema is not None else None
        return saved.step, saved.history

    def step(self, batch: dict[str, np.ndarray], step: int) -> StepMetrics:
        if not self.placed:
            self.state = self._to_global(self.state, self.replicated)
            self.ema = self._to_global(self.ema, self.replicated) if self.ema is not None else None
            self.placed = True
        x = self._to_global(batch, self.sharded) if self.world > 1 else batch
        self.state, metrics = self.step_fn(self.state, x)
        if self.ema is not None:
            self.ema = self.ema_fn(self.ema, self.state.trainable, self.cfg.ema_decay)
        return StepMetrics(float(metrics["loss"]), float(metrics["grad_norm"]), float(self.schedule(step)))

    def eval_loss(self, batch: dict[str, np.ndarray]) -> float:
        x = self._to_global(batch, self.sharded) if self.world > 1 else batch
        return float(self.eval_fn(self.state, x))

    def param_digest(self) -> str:
        import jax

        # This process's copy of each replicated leaf (a global array across workers is not fetchable whole).
        leaves = jax.tree_util.tree_leaves(self.state.trainable)
        return digest_arrays(np.asarray(x.addressable_data(0) if hasattr(x, "addressable_data") else x) for x in leaves)

    def save(self, directory: Path, steps_taken: int, history: list[dict[str, Any]]) -> None:
        import jax

        from gauntlet.platform.train.state_io import SavedState, save_train_state

        state, ema = jax.tree_util.tree_map(lambda a: np.asarray(jax.device_get(a)), (self.state, self.ema))
        save_train_state(directory, SavedState(
            step=steps_taken, trainable=state.trainable, opt_leaves=jax.tree_util.tree_leaves(state.opt_state),
            ema=ema, history=history, identity=self.identity,
        ))


def open_backend(cfg: TrainConfig, pre: Preflight, policy: TrainablePolicy, worker: WorkerContext) -> JaxBackend:
    return JaxBackend(cfg, pre, policy, worker)


def ray_trainer(loop: Any, loop_config: dict[str, Any], scaling: Any, run_config: Any, cfg: TrainConfig) -> Any:
    from ray.train.v2.jax import JaxConfig, JaxTrainer

    return JaxTrainer(loop, train_loop_config=loop_config, jax_config=JaxConfig(use_gpu=cfg.use_gpu),
                      scaling_config=scaling, run_config=run_config)
