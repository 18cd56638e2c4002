"""Pre-flight: everything that can be wrong with a training run's inputs, found before a worker starts.

The common checks live here (the dataset against the model's dimensions and cameras, NaN/inf frames,
an empty split, missing statistics, a batch larger than the split, and on `--resume` that the run
directory was written by the same run); what depends on the family (the base checkpoint, the memory
plan, the mode) is asked of its recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gauntlet.platform.train.config import RAY_RUN_NAME, TrainConfig, TrainConfigError
from gauntlet.platform.train.recipes import episode_weights, get_recipe, training_episodes


@dataclass(frozen=True)
class Preflight:
    """What the driver established before any worker starts (plain data: shipped to the workers)."""

    model_config: dict[str, Any]  # the family's ModelConfig.to_dict() of the model that trains
    base_fingerprint: str  # fingerprint of the frozen (lora) or starting (full) weights
    mode: str  # lora or full, after the plan
    plan: dict[str, Any]  # the recipe's plan (MemoryPlan.to_dict() for the VLA)
    stats_path: str  # the dataset's normalisation statistics
    dataset_frames: int  # frames in the training split
    identity: dict[str, Any]  # what --resume must find unchanged


def preflight(cfg: TrainConfig, *, workers_per_node: int | None = None) -> Preflight:
    """Check the inputs and decide the plan; TrainConfigError names the flag or file at fault."""
    from gauntlet.data.dataset_format import DatasetError, validate
    from gauntlet.data.normalization import NormStatsError

    recipe = get_recipe(cfg.policy)
    config, base_fp = recipe.model_config(cfg)
    needs = recipe.dataset_needs(config)
    try:
        ds = validate(cfg.dataset, expected_action_dim=needs.action_dim, expected_state_dim=needs.state_dim,
                      split=cfg.split, require_stats=True)
        ds.load_norm_stats()  # readable and complete, or refused here rather than in every worker
    except (DatasetError, NormStatsError) as exc:
        raise TrainConfigError(f"--dataset: {exc}") from None
    missing = [c for c in needs.cameras if c not in ds.cameras]
    if missing:
        raise TrainConfigError(f"--dataset {cfg.dataset}: has no {missing} images, which the {recipe.name} model "
                               f"reads ({len(needs.cameras)} camera(s)); collect with --cameras")
    trained, _ = training_episodes(cfg, ds)
    episode_weights(cfg, ds, trained)  # a fraction the trained episodes cannot honour is refused here
    frames = int(ds.lengths[trained].sum())
    if frames < cfg.batch_size:
        raise TrainConfigError(f"--batch-size {cfg.batch_size}: split {cfg.split!r} of {cfg.dataset} has only "
                               f"{frames} frames")
    plan = recipe.plan(cfg, config, ds, workers_per_node or cfg.workers)
    identity = {
        "dataset": str(Path(cfg.dataset).resolve()), "dataset_frames": frames, "split": cfg.split,
        "base_fingerprint": base_fp, "mode": plan.mode, "batch_size": cfg.batch_size, "seed": cfg.seed,
        # what --val-episodes and --recovery-fraction change, named only when set (older runs lack them)
        **({"val_episodes": cfg.val_episodes} if cfg.val_episodes else {}),
        **({"recovery_fraction": cfg.recovery_fraction} if cfg.recovery_fraction is not None else {}),
        "model": config.architecture_dict(), **plan.identity,
    }
    return Preflight(config.to_dict(), base_fp, plan.mode, plan.plan, str(ds.stats_path), frames, identity)


def check_run_dir(cfg: TrainConfig, identity: dict[str, Any]) -> None:
    """A new run needs an empty --out (and records its identity); --resume needs the same run there."""
    from gauntlet.runtime.run_identity import RunIdentityError, check_resume, write_run_manifest

    run = cfg.train_dir / "run.json"
    snapshot = cfg.train_dir / RAY_RUN_NAME
    if cfg.resume:
        if not run.is_file() or not snapshot.is_dir():
            raise TrainConfigError(f"--resume: {cfg.out} holds no training run to continue")
        try:
            check_resume(run, identity, f"--resume: {cfg.out}")
        except RunIdentityError as exc:
            raise TrainConfigError(str(exc)) from None
        return
    if run.exists() or snapshot.exists():
        raise TrainConfigError(f"--out {cfg.out}: already holds a training run; pass --resume to continue it "
                               "or choose another --out")
    write_run_manifest(run, identity, asdict(cfg))


def plan_text(pre: Preflight) -> str:
    """The plan as the lines printed before training (per-mode memory when the family plans it)."""
    from gauntlet.platform.train.memory_plan import MemoryBreakdown, fmt_bytes

    p = pre.plan
    if p.get("full") is None:
        return f"[train] {pre.mode} training, {p.get('trainable_params', 0):,} trainable parameters ({p['device_source']})"
    lines = [f"[train] memory plan per device (batch {p['batch_per_device']}, device {fmt_bytes(p['device_bytes'])} "
             f"from {p['device_source']}); requested {p['requested_mode']}, running {p['mode']}"]
    for key in ("full", "lora"):
        if p.get(key):
            b = MemoryBreakdown(**{k: v for k, v in p[key].items() if k != "total"})
            lines.append(f"[train]   {key:<4} {b.describe()}  ({b.trainable_params:,} trainable of {b.total_params:,})")
    return "\n".join(lines)
