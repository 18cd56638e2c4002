"""The Ray Train worker loop for `gauntlet train` (one process per data-parallel worker).

Data parallelism: every worker holds the whole (replicated) train state and its own shard of each
global batch. With more than one worker the processes form one JAX distributed system (on CPU via
Gloo collectives, which Ray Train's JaxConfig only sets up for TPU/GPU, so this module does it);
the batch is a global array sharded over a 1-D "data" mesh and the jitted step's gradient mean is
an all-reduce that XLA inserts. Every number that decides a step (which frames, which noise, which
flow time) is a function of (seed, step, rank), so a run resumed from a checkpoint repeats the
uninterrupted run's loss trajectory.

Checkpoints: rank 0 writes the train state (trainable params, optimizer state, EMA, the loss history)
into a fresh directory and hands it to `ray.train.report`, which copies it into the run's storage
and keeps the newest K; a worker group restarted after a failure, or a new `--resume` run, gets the
latest one from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _setup_distributed(rank: int, world: int, single_node: bool) -> None:
    """jax.distributed over Gloo for CPU workers (GPU/TPU: Ray Train's JaxConfig already did it)."""
    import jax
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    if world <= 1 or jax.distributed.is_initialized():
        return
    address = None
    if rank == 0:
        host = "127.0.0.1" if single_node else ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((host, 0))
            address = f"{host}:{s.getsockname()[1]}"
    address = broadcast_from_rank_zero(address)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=world, process_id=rank)
    del ray


def _lr_schedule(cfg: dict[str, Any]) -> Any:
    import optax

    peak, warmup, decay = cfg["learning_rate"], max(int(cfg["warmup_steps"]), 0), int(cfg["decay_steps"])
    parts = [optax.linear_schedule(peak * 0.01, peak, max(warmup, 1))]
    parts.append(optax.cosine_decay_schedule(peak, decay, alpha=0.1) if decay else optax.constant_schedule(peak))
    return optax.join_schedules(parts, [max(warmup, 1)])


def _batches(loader: Any, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """This worker's batch for every step from `start_step` on (the same batches an uninterrupted
    run draws at those steps)."""
    per_epoch = loader.batches_per_epoch
    yield from loader.iter_batches(start_epoch=start_step // per_epoch, start_batch=start_step % per_epoch)


def train_loop(loop_config: dict[str, Any]) -> None:
    cfg: dict[str, Any] = loop_config["config"]
    pre: dict[str, Any] = loop_config["preflight"]
    train_dir = Path(loop_config["train_dir"])
    if not cfg["use_gpu"]:
        # Before JAX is imported in this process: the CPU backend, whatever accelerators exist.
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import logging

    import ray.train

    # Ray Train logs every report at INFO; the job log should show our progress lines instead.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _setup_distributed(rank, world, single_node=ctx.get_local_world_size() == world)

    import jax
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from gauntlet.data.loader import DatasetLoader, LoaderConfig
    from gauntlet.data.normalization import NormStats
    from gauntlet.platform.train.reporting import StepReporter
    from gauntlet.platform.train.state_io import (
        SavedState,
        check_compatible,
        load_train_state,
        save_train_state,
    )
    from gauntlet.policies.checkpoints import tree_shapes
    from gauntlet.policies.vla.config import VLAConfig
    from gauntlet.policies.vla.model import init_variables_numpy
    from gauntlet.policies.vla.policy import VLAPolicy
    from gauntlet.policies.vla.train import init_train_state, make_train_step

    workers_dir = train_dir / "workers"
    workers_dir.mkdir(parents=True, exist_ok=True)
    (workers_dir / f"rank{rank}.json").write_text(json.dumps({"pid": os.getpid(), "rank": rank, "world": world,
                                                              "node": ray.util.get_node_ip_address()}))

    config = VLAConfig.from_dict(pre["model_config"])
    mode = pre["mode"]
    stats = NormStats.load(pre["stats_path"])
    if cfg["base"]:
        policy = VLAPolicy.load(cfg["base"])
        policy = VLAPolicy(config, policy.params, policy.norm_stats) if config != policy.config else policy
    else:
        policy = VLAPolicy(config, init_variables_numpy(config, cfg["seed"], collections=("params",))["params"])
    variables: dict[str, Any] = {"params": policy.params}
    if mode == "lora":
        variables["lora"] = policy.init_adapter(cfg["adapter_seed"])
    schedule = _lr_schedule(cfg)
    optimizer = optax.chain(optax.clip_by_global_norm(cfg["clip_norm"]),
                            optax.adamw(schedule, weight_decay=cfg["weight_decay"]))
    state = init_train_state(variables, mode, optimizer)
    ema = jax.tree_util.tree_map(lambda x: x, state.trainable) if cfg["ema_decay"] > 0 else None
    history: list[dict[str, Any]] = []

    checkpoint = ray.train.get_checkpoint()
    resumed_from = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = load_train_state(d)
            opt_leaves, opt_def = jax.tree_util.tree_flatten(state.opt_state)
            check_compatible(saved, tree_shapes(state.trainable), [np.shape(x) for x in opt_leaves],
                             pre["identity"], d)
        state = state.replace(
            step=jax.numpy.asarray(saved.step, jax.numpy.int32), trainable=saved.trainable,
            opt_state=jax.tree_util.tree_unflatten(opt_def, [jax.numpy.asarray(x) for x in saved.opt_leaves]),
        )
        ema = saved.ema if ema is not None else None
        history = saved.history
        resumed_from = saved.step

    # Replicated state, batch sharded over the data axis: XLA all-reduces the gradient mean.
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))

    def to_global(tree: Any, sharding: NamedSharding) -> Any:
        return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

    if world > 1:
        state = to_global(state, replicated)
        ema = to_global(ema, replicated) if ema is not None else None
    step_fn = make_train_step(policy.model, optimizer)
    ema_fn = jax.jit(lambda e, p, d: jax.tree_util.tree_map(lambda a, b: d * a + (1 - d) * b, e, p))

    loader_cfg = LoaderConfig(
        batch_size=cfg["batch_size"] // world, chunk_len=config.chunk_len, shuffle=True, seed=cfg["seed"],
        num_workers=cfg["loader_workers"], prefetch_depth=cfg["prefetch_depth"],
        decode_workers=cfg["decode_workers"], memory_budget_mb=cfg["loader_memory_mb"], split=cfg["split"],
        shard_index=rank, num_shards=world, image_size=config.image_size, epochs=0,
    )
    start = int(resumed_from or 0)
    reporter = StepReporter(cfg, train_dir, rank, world, start, history, resumed=resumed_from is not None)
    if rank == 0:
        where = f"resuming from step {start}" if resumed_from is not None else "starting"
        message = (f"[train] rank 0/{world} {where}; {cfg['steps']} steps, batch {cfg['batch_size']} "
                   f"({cfg['batch_size'] // world}/worker), mode {mode}")
        print(message, flush=True)

    def write_checkpoint(directory: Path, step: int) -> None:
        saved_state, saved_ema = jax.tree_util.tree_map(lambda a: np.asarray(jax.device_get(a)), (state, ema))
        save_train_state(directory, SavedState(
            step=step + 1, trainable=saved_state.trainable, opt_leaves=jax.tree_util.tree_leaves(saved_state.opt_state),
            ema=saved_ema, history=history, identity=pre["identity"],
        ))

    with DatasetLoader(pre["identity"]["dataset"], loader_cfg) as loader:
        batches = _batches(loader, start)
        for step in range(start, int(cfg["steps"])):
            raw = next(batches)
            rng = np.random.default_rng([cfg["seed"], step, rank])
            x = policy.prepare_train_batch(raw, rng, stats)
            if world > 1:
                x = to_global(x, sharded)
            state, metrics = step_fn(state, x)
            if ema is not None:
                ema = ema_fn(ema, state.trainable, cfg["ema_decay"])
            loss = float(metrics["loss"])
            reporter.record(step, loss, float(metrics["grad_norm"]), float(schedule(step)))
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {step + 1}; the latest good checkpoint is kept")
            reporter.report(step, lambda d, s=step: write_checkpoint(d, s))
