"""How `gauntlet train --policy vla` trains the VLA: model config, memory plan, data, artifact.

The loss and batch preparation are the policy's own (`VLAPolicy.train_loss`,
`prepare_train_batch`); this is the rest of what the training platform asks of a family. JAX is
imported only inside the functions that need it, so the driver can read the recipe cheaply and a
worker can choose JAX's platform before JAX loads.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.platform.train.config import TrainConfig, TrainConfigError
from gauntlet.platform.train.recipes import (
    VAL_BATCHES,
    BatchSource,
    DatasetNeeds,
    TrainPlan,
    WorkerContext,
    validation_seed,
)

if TYPE_CHECKING:
    from gauntlet.data.dataset_format import Dataset
    from gauntlet.platform.train.preflight import Preflight
    from gauntlet.policies.vla.config import VLAConfig
    from gauntlet.policies.vla.policy import VLAPolicy

CAMERAS = ("agentview", "wrist")  # dataset camera names, in the order of the model's num_cameras


@dataclass(frozen=True)
class VLARecipe:
    """The VLA's training recipe (see gauntlet.platform.train.recipes.TrainRecipe)."""

    name: str = "vla"  # the --policy value
    trainer: str = "jax"  # JaxTrainer workers, data-parallel over a JAX mesh
    loss_name: str = "flow-matching loss"  # loss.png's y axis

    def model_config(self, cfg: TrainConfig) -> tuple[VLAConfig, str]:
        from gauntlet.policies.checkpoints import CheckpointError, fingerprint, read_manifest
        from gauntlet.policies.vla.config import VLAConfig, get_config
        from gauntlet.policies.vla.model import init_variables_numpy

        if cfg.base:
            try:
                manifest = read_manifest(cfg.base)
            except CheckpointError as exc:
                raise TrainConfigError(f"--base: {exc}") from None
            if manifest.get("kind") != "base":
                raise TrainConfigError(f"--base {cfg.base}: is an {manifest.get('kind')} checkpoint; give the base "
                                       "checkpoint it was trained on (adapters are trained with --mode lora on a base)")
            try:
                config = VLAConfig.from_dict(manifest["model_config"])
            except (TypeError, ValueError) as exc:
                raise TrainConfigError(f"--base {cfg.base}: not a VLA checkpoint ({exc})") from None
            fp = str(manifest["fingerprint"])
        else:
            if cfg.mode == "lora":
                raise TrainConfigError("--base: LoRA trains adapters on a frozen base; give one with --base CKPT "
                                       "(train it first with --mode full)")
            try:
                config = get_config(cfg.preset)
            except ValueError as exc:
                raise TrainConfigError(f"--preset: {exc}") from None
            params = init_variables_numpy(config, cfg.seed, collections=("params",))["params"]
            fp = fingerprint(config.architecture_dict(), params)
        if cfg.lora_rank:
            config = config.replace(lora_rank=cfg.lora_rank)
        return config, fp

    def dataset_needs(self, config: VLAConfig) -> DatasetNeeds:
        return DatasetNeeds(config.action_dim, config.state_dim, CAMERAS[: config.num_cameras])

    def plan(self, cfg: TrainConfig, config: VLAConfig, dataset: Dataset, workers_per_node: int) -> TrainPlan:
        """The memory plan: `full` that cannot fit stops here with the numbers and the LoRA command."""
        from gauntlet.platform.train import memory_plan as mp

        device_bytes, source = mp.device_memory(cfg.device_memory_gb, workers_per_node)
        try:
            plan = mp.plan(config, cfg.mode, cfg.batch_per_worker, device_bytes=device_bytes, device_source=source,
                           ema=cfg.ema_decay > 0, lora_command=cfg.command_line(mode="lora"))
        except mp.MemoryPlanError as exc:
            raise TrainConfigError(str(exc)) from None
        identity = {"lora_rank": config.lora_rank if plan.mode == "lora" else 0, "adapter_seed": cfg.adapter_seed,
                    "ema": cfg.ema_decay > 0}
        return TrainPlan(plan.mode, plan.to_dict(), identity)

    def build_policy(self, cfg: TrainConfig, pre: Preflight) -> VLAPolicy:
        from gauntlet.data.normalization import NormStats
        from gauntlet.policies.vla.config import VLAConfig
        from gauntlet.policies.vla.model import init_variables_numpy
        from gauntlet.policies.vla.policy import VLAPolicy

        config = VLAConfig.from_dict(pre.model_config)
        stats = NormStats.load(pre.stats_path)
        if cfg.base:
            base = VLAPolicy.load(cfg.base)
            # --lora-rank may differ from the base's config; the base weights are the same.
            return VLAPolicy(config, base.params, stats)
        return VLAPolicy(config, init_variables_numpy(config, cfg.seed, collections=("params",))["params"], stats)

    @contextmanager
    def open_batches(self, cfg: TrainConfig, pre: Preflight, policy: VLAPolicy, worker: WorkerContext,
                     start_step: int) -> Iterator[BatchSource]:
        """Frames with images and action chunks from the shared dataset loader, sharded by rank."""
        from gauntlet.data.loader import DatasetLoader, LoaderConfig

        loader_cfg = LoaderConfig(
            batch_size=cfg.batch_per_worker, chunk_len=policy.config.chunk_len, shuffle=True, seed=cfg.seed,
            num_workers=cfg.loader_workers, prefetch_depth=cfg.prefetch_depth, decode_workers=cfg.decode_workers,
            memory_budget_mb=cfg.loader_memory_mb, split=cfg.split, shard_index=worker.rank,
            num_shards=worker.world, image_size=policy.config.image_size, epochs=0, val_episodes=cfg.val_episodes,
            recovery_fraction=cfg.recovery_fraction,
        )
        with DatasetLoader(pre.identity["dataset"], loader_cfg) as loader:
            per_epoch = loader.batches_per_epoch
            batches = loader.iter_batches(start_epoch=start_step // per_epoch, start_batch=start_step % per_epoch)
            # Order and content come from (seed, step); the step's generator is for the flow inputs.
            yield lambda rng: next(batches)

    def validation_batches(self, cfg: TrainConfig, pre: Preflight, policy: VLAPolicy,
                           episodes: Any) -> list[dict[str, Any]]:
        """The first VAL_BATCHES batches of a fixed permutation of the held-out frames (at most --batch-size each)."""
        from gauntlet.data.dataset_format import Dataset
        from gauntlet.data.loader import DatasetLoader, LoaderConfig

        frames = int(Dataset(pre.identity["dataset"]).lengths[episodes].sum())
        loader_cfg = LoaderConfig(
            batch_size=min(cfg.batch_size, frames), chunk_len=policy.config.chunk_len, seed=validation_seed(cfg),
            num_workers=1, prefetch_depth=1, decode_workers=1, memory_budget_mb=cfg.loader_memory_mb,
            split=cfg.split, image_size=policy.config.image_size, val_episodes=cfg.val_episodes, held_out=True,
        )
        with DatasetLoader(pre.identity["dataset"], loader_cfg) as loader:
            return list(itertools.islice(loader, VAL_BATCHES))

    def write_artifact(self, cfg: TrainConfig, pre: Preflight, state_dir: Path, dest: Path) -> list[dict[str, Any]]:
        """The trained adapter (lora) or model (full), EMA weights when kept, with the dataset's statistics."""
        from gauntlet.data.normalization import NormStats
        from gauntlet.platform.train.state_io import load_train_state
        from gauntlet.policies.vla.config import VLAConfig
        from gauntlet.policies.vla.policy import VLAPolicy

        saved = load_train_state(state_dir)
        history = saved.history
        weights = saved.ema if saved.ema is not None else saved.trainable
        stats = NormStats.load(pre.stats_path)
        extra = {"trained_steps": saved.step, "dataset": str(Path(cfg.dataset).resolve()), "mode": pre.mode,
                 "final_loss": history[-1]["loss"] if history else None, "ema": saved.ema is not None}
        if pre.mode == "lora":
            base = VLAPolicy.load(cfg.base)
            base.add_adapter(cfg.name, weights["lora"], norm_stats=stats)
            base.save_adapter(cfg.name, dest, extra=extra)
        else:
            VLAPolicy(VLAConfig.from_dict(pre.model_config), weights["params"], stats, name="vla").save(dest)
        return history

    def serve_hint(self, cfg: TrainConfig, pre: Preflight, out: Path) -> str:
        if pre.mode == "lora":
            return (f"gauntlet serve --policy vla={cfg.base} --adapters-dir {out.parent}  "
                    f"(then infer with ?adapter={out.name})")
        return f"gauntlet serve --policy vla={out}"


RECIPE = VLARecipe()
