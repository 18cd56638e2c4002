"""`gauntlet train`: fine-tune the VLA on a dataset with Ray Train (LoRA or full).

    gauntlet train --dataset DS --policy vla [--base CKPT] --mode lora|full|auto --steps N --out CKPT
                   [--workers N] [--resume]
    ray job submit --working-dir . -- python -m gauntlet.platform.train --dataset DS ...

Everything that can be wrong with the inputs is checked here, in the driver, before a worker starts:
the dataset (dims against the model, NaN/inf frames, an empty split, missing statistics), the base
checkpoint (a VLA base, not an adapter, with the dataset's dimensions), the memory plan (a `full`
run that cannot fit the device stops with the numbers and the LoRA command), and on `--resume` that
the run directory was written by the same run. Then `JaxTrainer` runs `train_worker.train_loop`
on data-parallel workers; Ray Train restarts a failed worker group from the latest checkpoint by
itself (`--max-failures`), and a later `--resume` continues a stopped run.

Output, `--out CKPT`: a checkpoint directory the policies load as they are (an adapter for LoRA,
served with `gauntlet serve --policy vla=BASE --adapters-dir PARENT` and requested by its directory
name; a base checkpoint for `full`), with the dataset's normalisation statistics. Run state lives
under `CKPT/train/`: Ray Train's storage (checkpoints, keep K), `metrics.jsonl`, `plan.json`,
`loss.png`, `summary.json` and one pid file per worker.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.runtime.config_args import option, parse_config

TRAIN_DIR = "train"  # run state inside --out
RAY_RUN_NAME = "ray_train"  # Ray Train's run name under TRAIN_DIR (what --resume finds)
ARTIFACT_FILES = ("config.json", "params.npz", "norm_stats.json")


class TrainConfigError(ValueError):
    """Bad input found before the first step; the message names the flag or file."""


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tunes a policy on a dataset with Ray Train (RAY_ADDRESS, else an embedded local Ray)."""

    dataset: str = option(help="dataset directory (gauntlet data collect / import-hdf5; run `gauntlet data stats` first)")
    out: str = option(help="output checkpoint directory (adapter for lora, base checkpoint for full)")
    policy: str = option("vla", help="policy to train: vla (JAX, JaxTrainer, LoRA or full) or bc_rnn (torch, "
                                     "TorchTrainer with DDP, full only; reads observation/state)",
                         choices=("vla", "bc_rnn"))
    base: str = option("", help="base checkpoint to fine-tune (required for lora; full without it starts "
                                "from a fresh --preset model)")
    preset: str = option("tiny", help="VLA preset for a fresh model (full mode without --base)")
    mode: str = option("lora", help="lora: train adapters on a frozen base; full: train every parameter; "
                                    "auto: full if it fits the device, else lora", choices=("lora", "full", "auto"))
    steps: int = option(100, help="total optimizer steps (with --resume: the new total)")
    workers: int = option(1, help="data-parallel Ray Train workers")
    resume: bool = option(False, help="continue the run in --out from its latest checkpoint")
    batch_size: int = option(32, help="global batch size (split evenly over the workers)")
    learning_rate: float = option(1e-3, help="peak AdamW learning rate")
    warmup_steps: int = option(10, help="linear warmup steps before the peak learning rate")
    decay_steps: int = option(0, help="cosine decay to 10%% of the peak over this many steps after warmup "
                                      "(0 = constant; fixed here rather than derived from --steps so that "
                                      "a resumed run with a new --steps keeps the same schedule)")
    weight_decay: float = option(1e-4, help="AdamW weight decay")
    clip_norm: float = option(1.0, help="global gradient-norm clip")
    ema_decay: float = option(0.0, help="EMA of the trained weights, exported instead of the raw weights "
                                        "(0 = off; e.g. 0.999)")
    lora_rank: int = option(0, help="adapter rank (0 = the model config's)")
    adapter_seed: int = option(0, help="seed of the fresh adapter (lora)")
    seed: int = option(0, help="seed of batch order, flow-matching noise and times, and a fresh model")
    checkpoint_every: int = option(50, help="write a training checkpoint every this many steps (and at the end)")
    keep_checkpoints: int = option(3, help="training checkpoints kept (oldest deleted first)")
    max_failures: int = option(3, help="worker-group failures Ray Train recovers from (restart from the latest checkpoint)")
    log_every: int = option(10, help="progress line every this many steps")
    report_every: int = option(10, help="report to Ray Train every this many steps; each report carries every "
                                        "step's metrics (loss, steps/s, samples/s, learning rate) in its "
                                        "`steps` list. A report is a barrier across workers (0.2 s with one "
                                        "worker, ~2 s with two on a 2-core host), so per-step reports would "
                                        "dominate a step that takes milliseconds")
    split: str = option("train", help="dataset split to train on")
    device_memory_gb: float = option(0.0, help="plan for devices of this size (0 = detect: the accelerator, "
                                               "else host RAM shared by the workers)")
    use_gpu: bool = option(False, help="one GPU per worker (JAX on CUDA)")
    cpus_per_worker: float = option(1.0, help="CPUs reserved per worker")
    loader_workers: int = option(2, help="threads assembling batches per worker")
    prefetch_depth: int = option(4, help="batches prepared ahead per worker")
    decode_workers: int = option(2, help="threads decoding images per worker")
    loader_memory_mb: int = option(2048, help="memory budget of each worker's loader (MiB)")
    adapter_name: str = option("", help="adapter name recorded in the artifact (default: --out's directory name)")

    def __post_init__(self) -> None:
        for name in ("steps", "workers", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "report_every",
                     "loader_workers", "prefetch_depth", "decode_workers", "loader_memory_mb"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "decay_steps", "max_failures", "lora_rank", "weight_decay"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise TrainConfigError(f"--learning-rate: must be positive, got {self.learning_rate}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainConfigError(f"--ema-decay: must be in [0, 1), got {self.ema_decay}")
        if self.batch_size % self.workers:
            raise TrainConfigError(f"--batch-size {self.batch_size} is not divisible by --workers {self.workers}")

    @property
    def batch_per_worker(self) -> int:
        return self.batch_size // self.workers

    @property
    def train_dir(self) -> Path:
        return Path(self.out).resolve() / TRAIN_DIR

    @property
    def name(self) -> str:
        return self.adapter_name or Path(self.out).resolve().name


# ---------------------------------------------------------------------------------------------
# Pre-flight


@dataclass(frozen=True)
class Preflight:
    """What the driver established before any worker starts (plain data: shipped to the workers)."""

    model_config: dict[str, Any]  # VLAConfig.to_dict() of the model that trains
    base_fingerprint: str  # fingerprint of the frozen (lora) or starting (full) weights
    mode: str  # lora or full, after the memory plan
    plan: dict[str, Any]  # MemoryPlan.to_dict()
    stats_path: str  # the dataset's normalisation statistics
    dataset_frames: int  # frames in the training split
    identity: dict[str, Any]  # what --resume must find unchanged


def _model_config(cfg: TrainConfig) -> tuple[Any, str]:
    from gauntlet.policies.checkpoints import CheckpointError, read_manifest
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
        from gauntlet.policies.checkpoints import fingerprint

        fp = fingerprint(config.architecture_dict(), init_variables_numpy(config, cfg.seed, collections=("params",))["params"])
    if cfg.lora_rank:
        config = config.replace(lora_rank=cfg.lora_rank)
    return config, fp


def _bc_rnn_config(cfg: TrainConfig) -> tuple[Any, str]:
    from gauntlet.keys import STATE_KEY
    from gauntlet.policies.bc_rnn.config import BCRNNConfig
    from gauntlet.policies.checkpoints import CheckpointError, read_manifest

    if cfg.mode == "lora":
        raise TrainConfigError("--mode lora: bc_rnn has no adapters; use --mode full (or auto)")
    if not cfg.base:
        # Datasets carry the robot state, not the privileged object state: a state-only BC-RNN.
        return BCRNNConfig(obs_keys=(STATE_KEY,), obs_dims=(8,)), f"fresh-seed-{cfg.seed}"
    try:
        manifest = read_manifest(cfg.base)
        config = BCRNNConfig.from_dict(dict(manifest["model_config"]))
    except (CheckpointError, TypeError, ValueError) as exc:
        raise TrainConfigError(f"--base {cfg.base}: not a bc_rnn checkpoint ({exc})") from None
    if manifest.get("extra", {}).get("model") != "bc_rnn":
        raise TrainConfigError(f"--base {cfg.base}: is a {manifest.get('extra', {}).get('model')!r} checkpoint, "
                               "not bc_rnn")
    if tuple(config.obs_keys) != (STATE_KEY,):
        raise TrainConfigError(f"--base {cfg.base}: reads {list(config.obs_keys)}, but datasets provide only "
                               f"{STATE_KEY!r}")
    return config, str(manifest["fingerprint"])


def preflight(cfg: TrainConfig, *, workers_per_node: int | None = None) -> Preflight:
    from gauntlet.data.dataset_format import DatasetError, validate
    from gauntlet.data.normalization import NormStatsError
    from gauntlet.platform.train import memory_plan as mp

    config, base_fp = _bc_rnn_config(cfg) if cfg.policy == "bc_rnn" else _model_config(cfg)
    try:
        state_dim = config.obs_dims[0] if cfg.policy == "bc_rnn" else config.state_dim
        ds = validate(cfg.dataset, expected_action_dim=config.action_dim, expected_state_dim=state_dim,
                      split=cfg.split, require_stats=True)
        stats = ds.load_norm_stats()
    except (DatasetError, NormStatsError) as exc:
        raise TrainConfigError(f"--dataset: {exc}") from None
    wanted = ["agentview", "wrist"][: config.num_cameras] if cfg.policy == "vla" else []
    missing = [c for c in wanted if c not in ds.cameras]
    if missing:
        raise TrainConfigError(f"--dataset {cfg.dataset}: has no {missing} images, which the VLA reads "
                               f"(num_cameras={config.num_cameras}); collect with --cameras")
    frames = int(ds.episodes.loc[ds.episodes["episode_index"].isin(ds.split(cfg.split)), "length"].sum())
    if frames < cfg.batch_size and cfg.batch_size > 0:
        raise TrainConfigError(f"--batch-size {cfg.batch_size}: split {cfg.split!r} of {cfg.dataset} has only "
                               f"{frames} frames")
    del stats
    if cfg.policy == "bc_rnn":
        if len(ds.split(cfg.split)) < cfg.workers:
            raise TrainConfigError(f"--workers {cfg.workers}: split {cfg.split!r} has only "
                                   f"{len(ds.split(cfg.split))} episodes to share out")
        from gauntlet.policies.bc_rnn.model import param_shapes

        count = int(sum(np.prod(s) for s in param_shapes(config).values()))
        plan_dict = {"requested_mode": cfg.mode, "mode": "full", "batch_per_device": cfg.batch_per_worker,
                     "device_bytes": 0, "device_source": "not planned (small torch model)", "full": None,
                     "lora": None, "trainable_params": count}
        identity = {"policy": "bc_rnn", "dataset": str(Path(cfg.dataset).resolve()), "dataset_frames": frames,
                    "split": cfg.split, "base_fingerprint": base_fp, "mode": "full", "batch_size": cfg.batch_size,
                    "seed": cfg.seed, "model": config.architecture_dict()}
        return Preflight(config.to_dict(), base_fp, "full", plan_dict, str(ds.stats_path), frames, identity)
    device_bytes, source = mp.device_memory(cfg.device_memory_gb, workers_per_node or cfg.workers)
    lora_cmd = _command_with(cfg, mode="lora")
    try:
        plan = mp.plan(config, cfg.mode, cfg.batch_per_worker, device_bytes=device_bytes, device_source=source,
                       ema=cfg.ema_decay > 0, lora_command=lora_cmd)
    except mp.MemoryPlanError as exc:
        raise TrainConfigError(str(exc)) from None
    identity = {
        "dataset": str(Path(cfg.dataset).resolve()), "dataset_frames": frames, "split": cfg.split,
        "base_fingerprint": base_fp, "mode": plan.mode, "lora_rank": config.lora_rank if plan.mode == "lora" else 0,
        "batch_size": cfg.batch_size, "seed": cfg.seed, "adapter_seed": cfg.adapter_seed,
        "ema": cfg.ema_decay > 0, "model": config.architecture_dict(),
    }
    return Preflight(config.to_dict(), base_fp, plan.mode, plan.to_dict(), str(ds.stats_path), frames, identity)


def _command_with(cfg: TrainConfig, **changes: Any) -> str:
    args = ["gauntlet", "train", "--dataset", cfg.dataset, "--out", cfg.out, "--steps", str(cfg.steps)]
    if cfg.base:
        args += ["--base", cfg.base]
    args += ["--mode", str(changes.get("mode", cfg.mode)), "--batch-size", str(cfg.batch_size)]
    if cfg.workers != 1:
        args += ["--workers", str(cfg.workers)]
    if changes.get("mode") == "lora" and not cfg.base:
        args += ["# needs --base: train a base first with --mode full on a smaller batch or a bigger device"]
    return " ".join(shlex.quote(a) if not a.startswith("#") else a for a in args)


def _check_run_dir(cfg: TrainConfig, identity: dict[str, Any]) -> None:
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
    """(artifact, loss history) from the final training checkpoint. The artifact is the trained
    adapter (lora) or model (full) with the dataset's statistics; for bc_rnn the checkpoint already
    holds a servable policy."""
    out = Path(cfg.out).resolve()
    tmp = out.parent / f".{out.name}.artifact-{uuid.uuid4().hex[:8]}"
    try:
        if cfg.policy == "bc_rnn":
            from gauntlet.platform.train.worker_torch import HISTORY_FILE, POLICY_DIR

            history = json.loads((state_dir / HISTORY_FILE).read_text())
            shutil.copytree(state_dir / POLICY_DIR, tmp)
        else:
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
                base.save_adapter(cfg.name, tmp, extra=extra)
            else:
                VLAPolicy(VLAConfig.from_dict(pre.model_config), weights["params"], stats, name="vla").save(tmp)
        publish_checkpoint(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, history


def plot_loss(history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
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
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Run


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Pre-flight, train on Ray Train, write the artifact; returns the summary."""

    from gauntlet.runtime.ray_session import start_ray

    pre = preflight(cfg)
    print(_plan_text(pre), flush=True)
    _check_run_dir(cfg, pre.identity)
    (cfg.train_dir / "plan.json").write_text(json.dumps(pre.plan, indent=1))

    start_ray("train")

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.jax import JaxConfig, JaxTrainer

    loop_config = {"config": asdict(cfg), "preflight": asdict(pre), "train_dir": str(cfg.train_dir)}
    scaling = ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})})
    run_config = RunConfig(
        name=RAY_RUN_NAME, storage_path=str(cfg.train_dir),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
    )
    if cfg.policy == "bc_rnn":
        from ray.train.torch import TorchTrainer

        from gauntlet.platform.train.worker_torch import train_loop_torch

        trainer: Any = TorchTrainer(train_loop_torch, train_loop_config=loop_config, scaling_config=scaling,
                                    run_config=run_config)
    else:
        from gauntlet.platform.train.worker_jax import train_loop

        trainer = JaxTrainer(train_loop, train_loop_config=loop_config, jax_config=JaxConfig(use_gpu=cfg.use_gpu),
                             scaling_config=scaling, run_config=run_config)
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
    _remove_orphan_checkpoints(cfg.train_dir / RAY_RUN_NAME)
    with result.checkpoint.as_directory() as state_dir:
        out, history = write_artifact(cfg, pre, Path(state_dir))
    plot = plot_loss(history, cfg.train_dir / "loss.png", f"{pre.mode} fine-tuning ({Path(cfg.dataset).name})")
    summary = {
        "out": str(out), "mode": pre.mode, "steps": history[-1]["step"] if history else 0,
        "final_loss": history[-1]["loss"] if history else None, "first_loss": history[0]["loss"] if history else None,
        "plan": pre.plan, "loss_plot": str(plot) if plot else None, "metrics": dict(result.metrics or {}),
        "serve": _serve_hint(cfg, pre, out),
    }
    (cfg.train_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    message = (f"[train] done: {summary['steps']} steps, loss {summary['first_loss']} -> {summary['final_loss']}; "
               f"artifact {out}")
    print(message, flush=True)
    print(f"[train] serve it: {summary['serve']}", flush=True)
    return summary


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


class TrainRunError(RuntimeError):
    """Training started but did not finish (after Ray Train's own retries)."""


def _serve_hint(cfg: TrainConfig, pre: Preflight, out: Path) -> str:
    if cfg.policy == "bc_rnn":
        return f"gauntlet serve --policy bc_rnn={out}"
    if pre.mode == "lora":
        return (f"gauntlet serve --policy vla={cfg.base} --adapters-dir {out.parent}  "
                f"(then infer with ?adapter={out.name})")
    return f"gauntlet serve --policy vla={out}"


def _plan_text(pre: Preflight) -> str:
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


def main(argv: list[str] | None = None) -> int:
    cfg = None
    try:
        cfg = parse_config(TrainConfig, argv, prog="gauntlet train", description=TrainConfig.__doc__)
        run_train(cfg)
    except TrainConfigError as exc:
        print(f"gauntlet train: {exc}", file=sys.stderr, flush=True)
        return 2
    except TrainRunError as exc:
        print(f"gauntlet train: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

