"""`gauntlet train`: fine-tune a policy on a dataset with Ray Train (VLA: LoRA or full; BC-RNN: full).

    gauntlet train --dataset DS --policy vla [--base CKPT] --mode lora|full|auto --steps N --out CKPT
                   [--workers N] [--resume]
    ray job submit --working-dir . -- python -m gauntlet.platform.train --dataset DS ...

The driver runs the pre-flight (`preflight.py`: everything that can be wrong with the inputs, found
before a worker starts), then the Ray Train trainer the family's recipe names (JaxTrainer or
TorchTrainer) runs the one worker loop (`worker.train_loop`) on data-parallel workers; Ray Train
restarts a failed worker group from the latest checkpoint by itself (`--max-failures`), and a later
`--resume` continues a stopped run. Last, the recipe turns the final checkpoint into the artifact.
Nothing here branches on the policy's name: what differs per family is in its recipe
(`recipes.py`).

Output, `--out CKPT`: a checkpoint directory the policies load as they are (an adapter for LoRA,
served with `gauntlet serve --policy vla=BASE --adapters-dir PARENT` and requested by its directory
name; a base checkpoint for `full`), with the dataset's normalisation statistics. Run state lives
under `CKPT/train/`: Ray Train's storage (checkpoints, keep K), `metrics.jsonl`, `plan.json`,
`loss.png`, `summary.json`, one pid file per worker and, with `--report-to`, `tensorboard/` or `wandb/`
(`live_metrics.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gauntlet.platform.train.config import (
    RAY_RUN_NAME,
    TRAIN_DIR,
    TrainConfig,
    TrainConfigError,
    TrainRunError,
)
from gauntlet.platform.train.live_metrics import LiveTraining
from gauntlet.platform.train.preflight import Preflight, check_run_dir, plan_text, preflight
from gauntlet.platform.train.recipes import get_recipe
from gauntlet.runtime.config_args import parse_config, run_command
from gauntlet.runtime.manifests import write_json

# Re-exported: the command's public names, importable from the module that runs it.
__all__ = ["ARTIFACT_FILES", "TRAIN_DIR", "Preflight", "TrainConfig", "TrainConfigError", "TrainRunError", "main",
           "preflight", "publish_checkpoint", "registered_checkpoint_steps", "run_train"]

ARTIFACT_FILES = ("config.json", "params.npz", "norm_stats.json")


# ---------------------------------------------------------------------------------------------
# Artifact


def publish_checkpoint(src: Path, out: Path) -> None:
    """Move a complete checkpoint's files into `out` (which also holds run state). config.json goes
    first out and last in, so at every instant `out` is either not a checkpoint or a whole one."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)
    for name in ARTIFACT_FILES:
        if name != "config.json":
            (out / name).unlink(missing_ok=True)
            if (src / name).exists():
                os.replace(src / name, out / name)
    os.replace(src / "config.json", out / "config.json")


def write_artifact(cfg: TrainConfig, pre: Preflight, state_dir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """(artifact, loss history) from the final training checkpoint: the recipe writes the servable
    checkpoint beside --out, then it is published into --out whole."""
    out = Path(cfg.out).resolve()
    tmp = out.parent / f".{out.name}.artifact-{uuid.uuid4().hex[:8]}"
    try:
        history = get_recipe(cfg.policy).write_artifact(cfg, pre, state_dir, tmp)
        publish_checkpoint(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, history


def plot_loss(history: list[dict[str, Any]], path: Path, title: str, ylabel: str = "loss") -> Path | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [h["loss"] for h in history], lw=1.2)
    for h in history:
        if h.get("resumed"):
            ax.axvline(h["step"], color="tab:orange", ls="--", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Run


def run_train(cfg: TrainConfig, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Pre-flight, train on Ray Train, write the artifact; returns the summary. `callbacks`: more Ray
    Train callbacks (a Tune trial's TuneReportCallback, which hands each report to the sweep)."""
    from gauntlet.runtime.ray_session import start_ray

    pre = preflight(cfg)
    print(plan_text(pre), flush=True)
    check_run_dir(cfg, pre.identity)
    write_json(cfg.train_dir / "plan.json", pre.plan)
    recipe = get_recipe(cfg.policy)

    start_ray("train")
    with LiveTraining(cfg, pre) as live:
        result = _fit(cfg, pre, recipe.trainer, [*live.callbacks, *(callbacks or [])])
        _remove_orphan_checkpoints(cfg.train_dir / RAY_RUN_NAME)
        with result.checkpoint.as_directory() as state_dir:
            out, history = write_artifact(cfg, pre, Path(state_dir))
        plot = plot_loss(history, cfg.train_dir / "loss.png", f"{pre.mode} fine-tuning ({Path(cfg.dataset).name})",
                         recipe.loss_name)
        summary = {
            "out": str(out), "mode": pre.mode, "steps": history[-1]["step"] if history else 0,
            "final_loss": history[-1]["loss"] if history else None,
            "first_loss": history[0]["loss"] if history else None, "plan": pre.plan,
            "loss_plot": str(plot) if plot else None, "metrics": dict(result.metrics or {}),
            "serve": recipe.serve_hint(cfg, pre, out),
        }
        live.finish(summary)
    write_json(cfg.train_dir / "summary.json", json.loads(json.dumps(summary, default=str)))
    message = (f"[train] done: {summary['steps']} steps, loss {summary['first_loss']} -> {summary['final_loss']}; "
               f"artifact {out}")
    print(message, flush=True)
    print(f"[train] serve it: {summary['serve']}", flush=True)
    return summary


def _fit(cfg: TrainConfig, pre: Preflight, trainer_kind: str, callbacks: list[Any] | None = None) -> Any:
    """Run the worker group on the trainer of `trainer_kind`; Ray Train's result, with a checkpoint.
    `callbacks`: Ray Train callbacks run on its controller (--report-to's forwarding)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from gauntlet.platform.train.worker import backend_module, train_loop

    loop_config = {"config": asdict(cfg), "preflight": asdict(pre), "train_dir": str(cfg.train_dir)}
    scaling = ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu, placement_strategy=cfg.placement,
                            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})})
    run_config = RunConfig(
        name=RAY_RUN_NAME, storage_path=str(cfg.train_dir),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints), callbacks=callbacks or [],
    )
    trainer = backend_module(trainer_kind).ray_trainer(train_loop, loop_config, scaling, run_config, cfg)
    drop_placement_group_cleaner(trainer)
    message = (f"[train] {pre.mode} fine-tuning on {cfg.workers} worker(s), {cfg.steps} steps, global batch "
               f"{cfg.batch_size}; run state in {cfg.train_dir}")
    print(message, flush=True)
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; show the cause, keep checkpoints
        raise TrainRunError(f"training failed: {exc}. Checkpoints written so far are kept in {cfg.train_dir}; "
                            "continue with --resume.") from exc
    if result.checkpoint is None:
        raise TrainRunError("training finished without a checkpoint")
    return result


def drop_placement_group_cleaner(trainer: Any) -> None:
    """Leaves Ray Train 2.60's PlacementGroupCleaner out of the run. It polls the controller through the
    State API, which needs a dashboard: Gauntlet's embedded Ray runs none, so every run ended in its
    timeout and a traceback, and its address lookup falls back to the cluster `ray start` last recorded
    on the machine, where the controller is unknown and so "dead": the cleaner would then remove this
    run's placement group. The controller removes its placement group when the run ends, and Ray when
    the job ends; the cleaner only covered a controller dying while its driver lives on."""
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:  # another Ray layout: its defaults stay
        return
    defaults = getattr(trainer, "_create_default_callbacks", None)
    if defaults is None:
        return
    trainer._create_default_callbacks = lambda: [callback for callback in defaults()
                                                 if not isinstance(callback, PlacementGroupCleanerCallback)]


def _registered_checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """Ray Train's records of the checkpoints it registered for a run ([] before the first)."""
    try:
        return list(json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _remove_orphan_checkpoints(run_dir: Path) -> None:
    """Delete checkpoint directories Ray Train never registered (written by a worker group that died
    before the controller recorded them): they are not in the snapshot, so keep-K never prunes them."""
    listed = {r.get("checkpoint_dir_name") for r in _registered_checkpoints(run_dir)}
    if not listed:
        return
    for path in run_dir.glob("checkpoint_*"):
        if path.is_dir() and path.name not in listed:
            shutil.rmtree(path, ignore_errors=True)


def registered_checkpoint_steps(train_dir: Path) -> list[int]:
    """Steps of the checkpoints Ray Train has registered for a run (what a restart resumes from)."""
    return sorted(int(r["metrics"]["step"]) for r in _registered_checkpoints(Path(train_dir) / RAY_RUN_NAME))


def main(argv: list[str] | None = None) -> int:
    def work() -> None:
        run_train(parse_config(TrainConfig, argv, prog="gauntlet train", description=TrainConfig.__doc__))

    return run_command("gauntlet train", work, {TrainConfigError: 2, TrainRunError: 1})


if __name__ == "__main__":
    sys.exit(main())

