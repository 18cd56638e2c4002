"""`gauntlet train`'s flags: one frozen dataclass, its checks, and the errors the command reports."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gauntlet.platform.train.recipes import RECIPES
from gauntlet.policies.vla.config import DEFAULT_PRESET
from gauntlet.runtime.config_args import option, require_at_least
from gauntlet.runtime.tracking import REPORT_TO, REPORT_TO_HELP

TRAIN_DIR = "train"  # run state inside --out
RAY_RUN_NAME = "ray_train"  # Ray Train's run name under TRAIN_DIR (what --resume finds)


class TrainConfigError(ValueError):
    """Bad input found before the first step; the message names the flag or file."""


class TrainRunError(RuntimeError):
    """Training started but did not finish (after Ray Train's own retries)."""


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tunes a policy on a dataset with Ray Train (RAY_ADDRESS, else an embedded local Ray)."""

    dataset: str = option(help="dataset directory (gauntlet data collect / import-hdf5; run `gauntlet data stats` first)")
    out: str = option(help="output checkpoint directory (adapter for lora, base checkpoint for full)")
    policy: str = option("vla", help="policy to train: " + "; ".join(f"{name} ({entry.summary})"
                                                                    for name, entry in RECIPES.items()),
                         choices=tuple(RECIPES))
    base: str = option("", help="base checkpoint to fine-tune (required for lora; full without it starts "
                                "from a fresh --preset model)")
    preset: str = option(DEFAULT_PRESET, help="VLA preset for a fresh model (full mode without --base)")
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
    val_episodes: int = option(0, help="hold out N episodes, never trained on; their loss is reported as "
                                       "val_loss with every report (0 = none). From the dataset's valid split "
                                       "when it has one, else from --split; picked at an even stride, recovery "
                                       "and nominal episodes in proportion (gauntlet/data/sampling.py)")
    recovery_fraction: float | None = option(None, help="share of each batch drawn from recovery-tagged episodes "
                                                        "(`data collect --from-scenes`), the rest from the others: "
                                                        "0 trains on nominal demonstrations only, 1 on recovery "
                                                        "only (default: off, every frame equally likely)")
    device_memory_gb: float = option(0.0, help="plan for devices of this size (0 = detect: the accelerator, "
                                               "else host RAM shared by the workers)")
    use_gpu: bool = option(False, help="one GPU per worker (JAX on CUDA)")
    cpus_per_worker: float = option(1.0, help="CPUs reserved per worker")
    placement: str = option("PACK", help="where Ray places the workers: PACK fills a node first (collectives "
                                         "stay on one host); SPREAD puts them on different nodes where it can "
                                         "(a multi-node cluster: one worker per node's CPUs or GPU)",
                            choices=("PACK", "SPREAD"))
    param_digests: bool = option(False, help="after every step each worker appends a digest of its trained "
                                             "parameters and of its batch to CKPT/train/workers/rankR.digests.jsonl "
                                             "(proves data-parallel workers hold the same weights; costs a hash "
                                             "of the weights per step)")
    loader_workers: int = option(2, help="threads assembling batches per worker")
    prefetch_depth: int = option(4, help="batches prepared ahead per worker")
    decode_workers: int = option(2, help="threads decoding images per worker")
    loader_memory_mb: int = option(2048, help="memory budget of each worker's loader (MiB)")
    adapter_name: str = option("", help="adapter name recorded in the artifact (default: --out's directory name)")
    report_to: str = option("none", help=REPORT_TO_HELP.replace("RUN/", "CKPT/train/") + "; per-step loss, learning "
                                         "rate, steps/s and samples/s, logged by the driver", choices=REPORT_TO)

    def __post_init__(self) -> None:
        require_at_least(self, 1, "steps", "workers", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every",
                         "report_every", "loader_workers", "prefetch_depth", "decode_workers", "loader_memory_mb",
                         error=TrainConfigError, as_flags=True)
        require_at_least(self, 0, "warmup_steps", "decay_steps", "max_failures", "lora_rank", "weight_decay",
                         "val_episodes", error=TrainConfigError, as_flags=True)
        if self.recovery_fraction is not None and not 0.0 <= self.recovery_fraction <= 1.0:
            raise TrainConfigError(f"--recovery-fraction: must be in [0, 1] (leave it out: off), "
                                   f"got {self.recovery_fraction}")
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

    def command_line(self, **changes: Any) -> str:
        """The `gauntlet train` command of this run with `changes` (e.g. mode="lora"), for messages."""
        args = ["gauntlet", "train", "--dataset", self.dataset, "--out", self.out, "--steps", str(self.steps)]
        if self.base:
            args += ["--base", self.base]
        args += ["--mode", str(changes.get("mode", self.mode)), "--batch-size", str(self.batch_size)]
        if self.workers != 1:
            args += ["--workers", str(self.workers)]
        if changes.get("mode") == "lora" and not self.base:
            args += ["# needs --base: train a base first with --mode full on a smaller batch or a bigger device"]
        return " ".join(shlex.quote(a) if not a.startswith("#") else a for a in args)

