"""How `gauntlet train --policy bc_rnn` trains the BC-RNN: model config, data windows, artifact.

The loss and batch preparation are the policy's own (`BCRNNPolicy.train_loss`,
`prepare_train_batch`); this is the rest of what the training platform asks of a family. A fresh
model reads every low-dimensional observation the dataset carries: the robot state, plus the
privileged object state when the dataset was collected with `--object-state`. torch is imported
only inside the functions that need it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.keys import (
    ACTIONS_KEY,
    DATASET_COLUMNS,
    OBJECT_STATE_FEATURE,
    OBJECT_STATE_KEY,
    STATE_DIM,
    STATE_KEY,
)
from gauntlet.platform.train.config import TrainConfig, TrainConfigError
from gauntlet.platform.train.recipes import (
    VAL_BATCHES,
    BatchSource,
    DatasetNeeds,
    TrainPlan,
    WorkerContext,
    training_episodes,
    validation_seed,
    worker_episodes,
)
from gauntlet.policies.bc_rnn.config import BCRNNConfig

if TYPE_CHECKING:
    from gauntlet.data.dataset_format import Dataset
    from gauntlet.platform.train.preflight import Preflight
    from gauntlet.policies.bc_rnn.policy import BCRNNPolicy
    from gauntlet.policies.bc_rnn.windows import SequenceSampler


def dataset_observations(dataset: str) -> dict[str, int]:
    """The low-dimensional observations a dataset provides, key -> width: the robot state, plus the
    object state if it was collected with it. A dataset that cannot be read provides the state only
    here; the pre-flight then names what is wrong with it."""
    from gauntlet.data.dataset_format import Dataset, DatasetError

    try:
        feats = Dataset(dataset).info["features"]
    except DatasetError:
        return {STATE_KEY: STATE_DIM}
    if OBJECT_STATE_FEATURE in feats:
        return {STATE_KEY: STATE_DIM, OBJECT_STATE_KEY: int(feats[OBJECT_STATE_FEATURE]["shape"][0])}
    return {STATE_KEY: STATE_DIM}


def _sampler(ds: Dataset, episodes: np.ndarray, policy: BCRNNPolicy,
             weights: np.ndarray | None = None) -> SequenceSampler:
    """Training windows over these episodes of the dataset, with the observations the policy reads,
    drawing episodes by `weights` (None: in proportion to their lengths)."""
    from gauntlet.policies.bc_rnn.windows import SequenceSampler

    keys = (*policy.config.obs_keys, ACTIONS_KEY)
    cols = ds.load_columns([DATASET_COLUMNS[k] for k in keys], episodes)
    bounds = np.cumsum(ds.lengths[episodes])[:-1]
    per_key = {k: np.split(cols[DATASET_COLUMNS[k]], bounds) for k in keys}
    return SequenceSampler([{k: per_key[k][i] for k in keys} for i in range(len(episodes))], policy.config,
                           np.random.default_rng(0), episode_weights=weights)


@dataclass(frozen=True)
class BCRNNRecipe:
    """The BC-RNN's training recipe (see gauntlet.platform.train.recipes.TrainRecipe)."""

    name: str = "bc_rnn"  # the --policy value
    trainer: str = "torch"  # TorchTrainer workers, DDP over Gloo (CPU) or NCCL (GPU)
    loss_name: str = "masked MSE (normalised actions)"  # loss.png's y axis

    def model_config(self, cfg: TrainConfig) -> tuple[BCRNNConfig, str]:
        from gauntlet.policies.bc_rnn.policy import MODEL_NAME
        from gauntlet.policies.checkpoints import CheckpointError, read_manifest

        if cfg.mode == "lora":
            raise TrainConfigError("--mode lora: bc_rnn has no adapters; use --mode full (or auto)")
        provided = dataset_observations(cfg.dataset)
        if not cfg.base:
            return BCRNNConfig(obs_keys=tuple(provided), obs_dims=tuple(provided.values())), f"fresh-seed-{cfg.seed}"
        try:
            manifest = read_manifest(cfg.base)
            config = BCRNNConfig.from_dict(dict(manifest["model_config"]))
        except (CheckpointError, TypeError, ValueError) as exc:
            raise TrainConfigError(f"--base {cfg.base}: not a bc_rnn checkpoint ({exc})") from None
        model = manifest.get("extra", {}).get("model")
        if model != MODEL_NAME:
            raise TrainConfigError(f"--base {cfg.base}: is a {model!r} checkpoint, not bc_rnn")
        if any(provided.get(k) != d for k, d in zip(config.obs_keys, config.obs_dims, strict=True)):
            raise TrainConfigError(f"--base {cfg.base}: reads {dict(zip(config.obs_keys, config.obs_dims, strict=True))}"
                                   f", but the dataset provides {provided} (key: width)")
        return config, str(manifest["fingerprint"])

    def dataset_needs(self, config: BCRNNConfig) -> DatasetNeeds:
        return DatasetNeeds(config.action_dim, config.obs_dims[0])

    def plan(self, cfg: TrainConfig, config: BCRNNConfig, dataset: Dataset, workers_per_node: int) -> TrainPlan:
        """Always full; no memory plan (a small torch model). Each worker needs episodes of its own, and
        under --recovery-fraction of the kinds it draws from (checked here for every rank's share)."""
        from gauntlet.policies.bc_rnn.model import param_shapes

        episodes = len(training_episodes(cfg, dataset)[0])
        if episodes < cfg.workers:
            raise TrainConfigError(f"--workers {cfg.workers}: split {cfg.split!r} has only {episodes} episodes "
                                   "to share out" + (" after --val-episodes" if cfg.val_episodes else ""))
        for rank in range(cfg.workers):
            worker_episodes(cfg, dataset, rank, cfg.workers)
        count = int(sum(np.prod(s) for s in param_shapes(config).values()))
        plan = {"requested_mode": cfg.mode, "mode": "full", "batch_per_device": cfg.batch_per_worker,
                "device_bytes": 0, "device_source": "not planned (small torch model)", "full": None,
                "lora": None, "trainable_params": count}
        return TrainPlan("full", plan, {"policy": self.name})

    def build_policy(self, cfg: TrainConfig, pre: Preflight) -> BCRNNPolicy:
        from gauntlet.data.normalization import NormStats
        from gauntlet.policies.bc_rnn.policy import BCRNNPolicy

        config = BCRNNConfig.from_dict(pre.model_config)
        policy = BCRNNPolicy.load(cfg.base) if cfg.base else BCRNNPolicy.create(config, seed=cfg.seed)
        policy.set_norm_stats(NormStats.load(pre.stats_path))
        return policy

    @contextmanager
    def open_batches(self, cfg: TrainConfig, pre: Preflight, policy: BCRNNPolicy, worker: WorkerContext,
                     start_step: int) -> Iterator[BatchSource]:
        """Windows over this worker's disjoint share of the split's episodes (`worker_episodes`), drawn
        by their --recovery-fraction weights; the step's generator draws them, so a resumed run repeats
        the uninterrupted one."""
        from gauntlet.data.dataset_format import Dataset

        del start_step  # windows depend on the step's generator only
        ds = Dataset(pre.identity["dataset"])
        mine, weights = worker_episodes(cfg, ds, worker.rank, worker.world)
        sampler = _sampler(ds, mine, policy, weights)
        yield lambda rng: sampler.sample(cfg.batch_per_worker, rng)

    def validation_batches(self, cfg: TrainConfig, pre: Preflight, policy: BCRNNPolicy,
                           episodes: np.ndarray) -> list[dict[str, np.ndarray]]:
        """VAL_BATCHES windows batches over the held-out episodes, drawn once from a fixed generator."""
        from gauntlet.data.dataset_format import Dataset

        sampler = _sampler(Dataset(pre.identity["dataset"]), episodes, policy)
        rng = np.random.default_rng(validation_seed(cfg))
        return [sampler.sample(cfg.batch_size, rng) for _ in range(VAL_BATCHES)]

    def write_artifact(self, cfg: TrainConfig, pre: Preflight, state_dir: Path, dest: Path) -> list[dict[str, Any]]:
        """The training checkpoint already holds a servable BC-RNN checkpoint: copy it."""
        from gauntlet.platform.train.backend_torch import POLICY_DIR, read_history

        shutil.copytree(state_dir / POLICY_DIR, dest)
        return read_history(state_dir)

    def serve_hint(self, cfg: TrainConfig, pre: Preflight, out: Path) -> str:
        return f"gauntlet serve --policy {self.name}={out}"


RECIPE = BCRNNRecipe()
