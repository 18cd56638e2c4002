"""`gauntlet sweep fusion`: a Ray Tune grid over fusion method x refine x slide x seed.

Each trial fuses one slide with one method (optionally after the PCA refine step), clusters the
fused embedding into the slide's number of layers (KMeans and a tied-covariance Gaussian mixture)
and scores ARI/NMI against the annotation. Trials run in parallel on Ray; a trial whose slide is bad
(no labels, no coordinates, a mismatched embedding cache) or whose fit collapses to NaN is recorded
as failed with the reason, and the sweep goes on.

Writes to --out: trials.csv/.parquet (one row per trial), summary.csv/.parquet (mean and sd per
method and refine setting), refine_delta.csv/.parquet (refine minus no refine, per method),
ari_by_method.png and refine_delta.png; prints the table at the end. With `--report-to`, each
trial's config and metrics and the final tables also go to OUT/tensorboard/ or OUT/wandb/.

    gauntlet sweep fusion --slides synthetic:3 --out runs/fusion
    python -m gauntlet.fusion.sweep --slides a.h5ad b.h5ad --methods concat staig --out runs/f
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.fusion.errors import SlideSpecError
from gauntlet.fusion.methods import METHOD_NAMES
from gauntlet.fusion.methods.base import FusionConfig
from gauntlet.fusion.slide_sources import SlideLoadOptions, expand_slide_specs, slide_display_name
from gauntlet.fusion.sweep_report import format_table, write_results
from gauntlet.fusion.synthetic import SyntheticConfig
from gauntlet.fusion.trial import METRIC_COLUMNS, ROW_COLUMNS, STATUS_FAILED, STATUS_OK, TrialSpec, run_trial
from gauntlet.platform.sweeps.job import SweepJob, death_reason, run_job, tune_run_config
from gauntlet.platform.sweeps.tune_progress import sweep_log, trial_progress
from gauntlet.runtime.config_args import option
from gauntlet.runtime.tracking import REPORT_TO, REPORT_TO_HELP, Tracker

if TYPE_CHECKING:
    import pandas as pd


SWEEP = "fusion"
# The flags' defaults are the library's: one definition of each (the sweep only exposes them).
_METHOD, _SYNTHETIC, _LOADING = FusionConfig(), SyntheticConfig(), SlideLoadOptions()


def _log(message: str) -> None:
    sweep_log(SWEEP, message)


@dataclass(frozen=True)
class SweepFusionConfig:
    """Flags of `gauntlet sweep fusion`."""

    # output directory for tables, plots and Tune's own records
    out: str = option(help="output directory (tables, plots, Tune records)")
    # slides: `synthetic:N` (N generated slides), .h5ad files, or directories of them
    slides: tuple[str, ...] = option(
        ("synthetic:3",), help="`synthetic:N` and/or .h5ad paths/directories (image cache: <stem>.image.npz)"
    )
    # fusion methods to compare
    methods: tuple[str, ...] = option(METHOD_NAMES, help="fusion methods to compare", choices=METHOD_NAMES)
    # seeds per (method, refine, slide) cell
    seeds: int = option(3, help="seeds per (method, refine, slide) cell")
    # refine settings to compare: PCA width per modality before fusion, 0 = no refine
    refine_dims: tuple[int, ...] = option((0, 32), help="refine PCA widths to compare; 0 means no refine")
    # training epochs of the learned methods
    epochs: int = option(_METHOD.epochs, help="full-batch training epochs of learned methods")
    # learning rate of the learned methods
    lr: float = option(_METHOD.lr, help="AdamW learning rate of learned methods")
    # fused embedding width of the learned methods
    out_dim: int = option(_METHOD.out_dim, help="fused embedding width of learned methods")
    # hidden width of the learned methods
    hidden_dim: int = option(_METHOD.hidden_dim, help="hidden width of learned methods")
    # spots per synthetic slide
    synthetic_spots: int = option(_SYNTHETIC.n_spots, help="spots per synthetic slide")
    # layers per synthetic slide
    synthetic_layers: int = option(_SYNTHETIC.n_layers, help="laminar layers per synthetic slide")
    # difficulty of synthetic slides (0 clean .. 1 hard)
    difficulty: float = option(_SYNTHETIC.difficulty, help="synthetic difficulty in [0, 1]: weaker layer signal, more noise")
    # genes in synthetic count matrices
    synthetic_genes: int = option(_SYNTHETIC.n_genes, help="genes per synthetic slide")
    # most-variable genes kept as expression features
    max_genes: int = option(_LOADING.max_genes, help="most-variable genes kept as expression features")
    # obs column holding layer labels in .h5ad slides
    label_key: str | None = option(None, help="obs column with layer labels (default: try layer_guess, ground_truth, ...)")
    # obsm key holding the image embedding in .h5ad slides
    image_key: str | None = option(None, help="obsm key with the image embedding (default: the <stem>.image.npz cache)")
    # encoder the image caches must come from
    image_encoder: str | None = option(None, help="require image caches made by this encoder")
    # CPUs of the embedded local Ray (ignored when RAY_ADDRESS is set)
    num_cpus: int = option(0, help="CPUs for the embedded local Ray; 0 = all (ignored with RAY_ADDRESS)")
    # CPUs per trial (also its torch thread count)
    cpus_per_trial: int = option(1, help="CPUs per trial (torch threads)")
    # GPUs per trial; > 0 runs the methods on CUDA
    gpus_per_trial: float = option(0.0, help="GPUs per trial; > 0 runs the methods on cuda")
    # where each trial's config and metrics and the final tables are tracked
    report_to: str = option("none", help=REPORT_TO_HELP.replace("RUN/", "OUT/") + "; each trial's config and "
                                         "metrics, and the final tables", choices=REPORT_TO)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        unknown = [m for m in self.methods if m not in METHOD_NAMES]
        if unknown or not self.methods:
            raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(METHOD_NAMES)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"--methods lists a method twice: {self.methods}")
        if not self.refine_dims or any(d < 0 for d in self.refine_dims) or len(set(self.refine_dims)) != len(
            self.refine_dims
        ):
            raise ValueError(f"--refine-dims must be distinct integers >= 0, got {self.refine_dims}")
        if not self.slides:
            raise ValueError("--slides needs at least one entry")
        if self.cpus_per_trial < 1 or self.gpus_per_trial < 0 or self.num_cpus < 0:
            raise ValueError("--cpus-per-trial must be >= 1, --gpus-per-trial and --num-cpus >= 0")

    def fusion_config(self) -> FusionConfig:
        return FusionConfig(
            epochs=self.epochs, lr=self.lr, out_dim=self.out_dim, hidden_dim=self.hidden_dim,
            device="cuda" if self.gpus_per_trial > 0 else "cpu",
        )

    def load_options(self) -> SlideLoadOptions:
        synthetic = SyntheticConfig(
            n_spots=self.synthetic_spots, n_layers=self.synthetic_layers, n_genes=self.synthetic_genes,
            difficulty=self.difficulty,
        )
        return SlideLoadOptions(
            synthetic=synthetic, max_genes=self.max_genes, label_key=self.label_key, image_key=self.image_key,
            image_encoder=self.image_encoder,
        )


def fusion_trainable(params: dict[str, Any], fusion_config: FusionConfig, load_options: SlideLoadOptions,
                     torch_threads: int) -> None:
    """The Tune trainable: one trial, one result row (failed trials report status and reason)."""
    import torch
    from ray import tune

    torch.set_num_threads(torch_threads)  # trials share the machine; one thread each by default
    spec = TrialSpec(
        slide_id=params["slide_id"], method=params["method"], refine_dim=int(params["refine_dim"]),
        seed=int(params["seed"]),
    )
    tune.report(run_trial(spec, fusion_config, load_options))


def _describe_trial(cfg: dict[str, Any]) -> str:
    return f"{cfg['method']} refine={cfg['refine_dim']} {Path(str(cfg['slide_id'])).name} seed={cfg['seed']}"


def _trial_outcome(result: dict[str, Any]) -> str:
    if result.get("status") == STATUS_OK:
        return f"ARI {result['ari_kmeans']:.3f} (gmm {result['ari_gmm']:.3f})"
    return f"FAILED {result.get('error_type', '')}: {result.get('reason', '')}"


def _dead_trial_row(cfg: dict[str, Any], result: Any, reason: str) -> dict[str, Any]:
    """The row of a trial that crashed (not a reported bad input): kept visible in the table."""
    return {
        "slide": slide_display_name(str(cfg.get("slide_id", "?"))), "method": cfg.get("method", "?"),
        "refine_dim": int(cfg.get("refine_dim", -1)), "seed": int(cfg.get("seed", -1)),
        "status": STATUS_FAILED, "error_type": type(result.error).__name__ if result.error else "NoResult",
        "reason": reason,
    }


def run_sweep(config: SweepFusionConfig, slide_ids: list[str], tracker: Tracker | None = None) -> pd.DataFrame:
    """Runs the Tune grid on the current Ray and returns one row per trial (each also sent to `tracker`)."""
    import pandas as pd
    from ray import tune

    param_space = {
        "method": tune.grid_search(list(config.methods)),
        "refine_dim": tune.grid_search(list(config.refine_dims)),
        "slide_id": tune.grid_search(slide_ids),
        "seed": tune.grid_search(list(range(config.seeds))),
    }
    total = len(config.methods) * len(config.refine_dims) * len(slide_ids) * config.seeds
    trainable = tune.with_resources(
        tune.with_parameters(
            fusion_trainable, fusion_config=config.fusion_config(), load_options=config.load_options(),
            torch_threads=config.cpus_per_trial,
        ),
        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial},
    )
    progress = trial_progress(SWEEP, total, _describe_trial, _trial_outcome, "ERROR (see the reason column)",
                              tracker=tracker, metrics=(*METRIC_COLUMNS, "fit_s"))
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        # reusing trial actors skips a fresh worker (and a torch import) per trial
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),
        run_config=tune_run_config(SWEEP, Path(config.out), progress),
    )
    _log(f"{total} trials: {len(config.methods)} methods x {len(config.refine_dims)} refine x "
         f"{len(slide_ids)} slides x {config.seeds} seeds")
    rows = []
    for result in tuner.fit():
        reason = death_reason(result)
        if reason is None:
            rows.append({k: v for k, v in result.metrics.items() if k in ROW_COLUMNS})
        else:
            rows.append(_dead_trial_row(result.config or {}, result, reason))
    table = pd.DataFrame(rows).reindex(columns=list(ROW_COLUMNS))
    return table.sort_values(["method", "refine_dim", "slide", "seed"], kind="stable").reset_index(drop=True)


def _expand_slides(config: SweepFusionConfig) -> list[str]:
    """The pre-flight: every slide spec names slides that exist (a SlideSpecError names the one that does not)."""
    return expand_slide_specs(config.slides)


def _run(config: SweepFusionConfig, slide_ids: list[str], tracker: Tracker) -> dict[str, pd.DataFrame]:
    tables = write_results(run_sweep(config, slide_ids, tracker), Path(config.out))
    for name, frame in tables.items():
        tracker.log_table(f"sweep/{name}", frame.to_dict("records"))
    return tables


def _finish(config: SweepFusionConfig, slide_ids: list[str], tables: dict[str, pd.DataFrame]) -> int:
    trials = tables["trials"]
    print(format_table(tables["summary"], tables["refine_delta"], trials), flush=True)
    n_ok = int((trials["status"] == STATUS_OK).sum())
    _log(f"{n_ok}/{len(trials)} trials ok; tables and plots in {Path(config.out).resolve()}")
    return 0 if n_ok else 1


JOB = SweepJob(
    name=SWEEP, config_type=SweepFusionConfig, description=__doc__.split("\n\n")[0], prepare=_expand_slides,
    input_errors=(SlideSpecError,), ray_cpus=lambda config, _: config.num_cpus or os.cpu_count() or 1,
    run=_run, finish=_finish,
)


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
