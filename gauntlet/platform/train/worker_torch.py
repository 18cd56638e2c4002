"""The Ray Train worker loop for torch policies (`gauntlet train --policy bc_rnn`, on `TorchTrainer`).

Data parallelism is torch DDP (Gloo on CPU, NCCL on GPU) set up by `ray.train.torch.prepare_model`:
each worker samples windows from its own disjoint share of the split's episodes (every
world-th episode) and DDP averages the gradients. As in the JAX loop, the sampler's generator is
re-seeded from (seed, step, rank) every step, so a resumed run repeats the uninterrupted one.

Checkpoints hold the policy as a normal BC-RNN checkpoint (`policy/`, servable as is), the Adam
state as `.npz` + JSON (no pickle: torch's `state_dict` is flattened to arrays and numbers), and
the loss history.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

OPTIMIZER_ARRAYS = "optimizer.npz"
OPTIMIZER_META = "optimizer.json"
HISTORY_FILE = "history.json"
POLICY_DIR = "policy"


def optimizer_to_files(state: dict[str, Any], directory: Path) -> None:
    """torch optimizer state_dict -> arrays (.npz) + hyperparameters (.json), pickle-free."""
    arrays, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            key = f"{idx}/{name}"
            if hasattr(value, "detach"):
                arrays[key] = value.detach().cpu().numpy()
            else:
                scalars[key] = value
    np.savez(directory / OPTIMIZER_ARRAYS, **arrays)
    (directory / OPTIMIZER_META).write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def optimizer_from_files(directory: Path) -> dict[str, Any]:
    import torch

    meta = json.loads((directory / OPTIMIZER_META).read_text())
    state: dict[int, dict[str, Any]] = {}
    with np.load(directory / OPTIMIZER_ARRAYS, allow_pickle=False) as npz:
        for key in npz.files:
            idx, name = key.split("/", 1)
            state.setdefault(int(idx), {})[name] = torch.from_numpy(npz[key].copy())
    for key, value in meta["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _episodes(dataset: str, split: str, rank: int, world: int) -> list[dict[str, np.ndarray]]:
    from gauntlet.data.dataset_format import Dataset
    from gauntlet.keys import ACTION_FEATURE, ACTIONS_KEY, STATE_FEATURE, STATE_KEY

    ds = Dataset(dataset)
    mine = ds.split(split)[rank::world]
    cols = ds.load_columns([STATE_FEATURE, ACTION_FEATURE], mine)
    bounds = np.cumsum(ds.lengths[mine])[:-1]
    states = np.split(cols[STATE_FEATURE], bounds)
    actions = np.split(cols[ACTION_FEATURE], bounds)
    return [{STATE_KEY: s, ACTIONS_KEY: a} for s, a in zip(states, actions, strict=True)]


def train_loop_torch(loop_config: dict[str, Any]) -> None:
    import logging

    import ray.train
    import ray.train.torch
    import torch

    from gauntlet.data.normalization import NormStats
    from gauntlet.platform.train.reporting import StepReporter
    from gauntlet.policies.bc_rnn.config import BCRNNConfig
    from gauntlet.policies.bc_rnn.policy import BCRNNPolicy
    from gauntlet.policies.bc_rnn.train import SequenceSampler

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    cfg: dict[str, Any] = loop_config["config"]
    pre: dict[str, Any] = loop_config["preflight"]
    train_dir = Path(loop_config["train_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    (train_dir / "workers").mkdir(parents=True, exist_ok=True)
    (train_dir / "workers" / f"rank{rank}.json").write_text(json.dumps({"pid": os.getpid(), "rank": rank,
                                                                       "world": world}))
    torch.manual_seed(cfg["seed"])
    config = BCRNNConfig.from_dict(pre["model_config"])
    stats = NormStats.load(pre["stats_path"])
    policy = BCRNNPolicy.load(cfg["base"]) if cfg["base"] else BCRNNPolicy.create(config, seed=cfg["seed"])
    policy.set_norm_stats(stats)
    sampler = SequenceSampler(_episodes(pre["identity"]["dataset"], cfg["split"], rank, world), config, stats,
                              np.random.default_rng(0))
    optimizer = torch.optim.Adam(policy.model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    history: list[dict[str, Any]] = []
    start, resumed = 0, False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            restored = BCRNNPolicy.load(Path(d) / POLICY_DIR)
            policy.model.load_state_dict(restored.model.state_dict())
            optimizer.load_state_dict(optimizer_from_files(Path(d)))
            history = json.loads((Path(d) / HISTORY_FILE).read_text())
        start, resumed = (history[-1]["step"] if history else 0), True
    model = ray.train.torch.prepare_model(policy.model)
    model.train()
    reporter = StepReporter(cfg, train_dir, rank, world, start, history, resumed)
    if rank == 0:
        message = (f"[train] rank 0/{world} {f'resuming from step {start}' if resumed else 'starting'}; "
                   f"{cfg['steps']} steps, bc_rnn, batch {cfg['batch_size']}")
        print(message, flush=True)
    per_worker = cfg["batch_size"] // world

    def write_checkpoint(directory: Path, step: int) -> None:
        policy.save(directory / POLICY_DIR, extra={"trained_steps": step + 1})
        optimizer_to_files(optimizer.state_dict(), directory)
        (directory / HISTORY_FILE).write_text(json.dumps(history))

    for step in range(start, cfg["steps"]):
        sampler.rng = np.random.default_rng([cfg["seed"], step, rank])
        inputs, targets, mask = (torch.from_numpy(np.ascontiguousarray(a)) for a in sampler.sample(per_worker))
        pred, _ = model(inputs)  # (n, L, D)
        err = ((pred - targets) ** 2).mean(-1)  # (n, L)
        loss = (err * mask).sum() / mask.sum().clamp_min(1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients here
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_norm"]))
        optimizer.step()
        # The logged loss is the mean over workers, as in the JAX loop.
        loss_value = loss.detach().clone()
        if world > 1:
            torch.distributed.all_reduce(loss_value)
            loss_value /= world
        reporter.record(step, float(loss_value), grad_norm, cfg["learning_rate"])
        reporter.report(step, lambda d, s=step: write_checkpoint(d, s))
