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
    python -m gauntlet.platform.sweeps.fusion --slides a.h5ad b.h5ad --methods concat staig --out runs/f
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.fusion.methods import METHOD_NAMES
from gauntlet.fusion.methods.base import FusionConfig
from gauntlet.fusion.slide_sources import SlideLoadOptions
from gauntlet.fusion.synthetic import SyntheticConfig
from gauntlet.platform.sweeps.tune_progress import sweep_log, trial_progress
from gauntlet.runtime.config_args import option, parse_config
from gauntlet.runtime.manifests import write_json
from gauntlet.runtime.tracking import REPORT_TO, REPORT_TO_HELP, Tracker, open_tracker

if TYPE_CHECKING:
    import pandas as pd


SWEEP = "fusion"
PROG = f"gauntlet sweep {SWEEP}"
# The flags' defaults are the library's: one definition of each (the sweep only exposes them).
_METHOD, _SYNTHETIC, _LOADING = FusionConfig(), SyntheticConfig(), SlideLoadOptions()
METRICS = ("ari_kmeans", "nmi_kmeans", "ari_gmm", "nmi_gmm")


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

    from gauntlet.fusion.trial import TrialSpec, run_trial

    torch.set_num_threads(torch_threads)  # trials share the machine; one thread each by default
    spec = TrialSpec(
        slide_id=params["slide_id"], method=params["method"], refine_dim=int(params["refine_dim"]),
        seed=int(params["seed"]),
    )
    tune.report(run_trial(spec, fusion_config, load_options))


def _describe_trial(cfg: dict[str, Any]) -> str:
    return f"{cfg['method']} refine={cfg['refine_dim']} {Path(str(cfg['slide_id'])).name} seed={cfg['seed']}"


def _trial_outcome(result: dict[str, Any]) -> str:
    if result.get("status") == "ok":
        return f"ARI {result['ari_kmeans']:.3f} (gmm {result['ari_gmm']:.3f})"
    return f"FAILED {result.get('error_type', '')}: {result.get('reason', '')}"


def run_sweep(config: SweepFusionConfig, slide_ids: list[str], tracker: Tracker | None = None) -> pd.DataFrame:
    """Runs the Tune grid on the current Ray and returns one row per trial (each also sent to `tracker`)."""
    import pandas as pd
    from ray import tune

    from gauntlet.fusion.slide_sources import slide_display_name
    from gauntlet.fusion.trial import STATUS_FAILED

    out = Path(config.out).resolve()
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
                              tracker=tracker, metrics=(*METRICS, "fit_s"))
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        # reusing trial actors skips a fresh worker (and a torch import) per trial
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),
        run_config=tune.RunConfig(
            name="fusion", storage_path=str(out / "tune"), verbose=0, callbacks=[progress],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    _log(f"{total} trials: {len(config.methods)} methods x {len(config.refine_dims)} refine x "
         f"{len(slide_ids)} slides x {config.seeds} seeds")
    grid = tuner.fit()
    rows = []
    for result in grid:
        cfg = result.config or {}
        if result.error is not None or not result.metrics or "status" not in result.metrics:
            # a crash inside the trial (not a reported bad input): keep it visible in the table
            rows.append({
                "slide": slide_display_name(str(cfg.get("slide_id", "?"))), "method": cfg.get("method", "?"),
                "refine_dim": int(cfg.get("refine_dim", -1)), "seed": int(cfg.get("seed", -1)),
                "status": STATUS_FAILED, "error_type": type(result.error).__name__ if result.error else "NoResult",
                "reason": str(result.error or "trial ended without reporting a result").strip().splitlines()[-1],
            })
            continue
        rows.append({k: v for k, v in result.metrics.items() if k in _ROW_COLUMNS})
    table = pd.DataFrame(rows).reindex(columns=list(_ROW_COLUMNS))
    return table.sort_values(["method", "refine_dim", "slide", "seed"], kind="stable").reset_index(drop=True)


_ROW_COLUMNS = (
    "slide", "method", "refine_dim", "seed", "status", "error_type", "reason", *METRICS,
    "n_spots", "n_layers", "n_scored", "embedding_dim", "fit_s",
)


def summarise(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary per method x refine_dim with mean/sd of each metric, refine delta per method)."""
    import pandas as pd

    summary_rows = []
    for (method, refine_dim), group in trials.groupby(["method", "refine_dim"], sort=True):
        ok = group[group["status"] == "ok"]
        row: dict[str, Any] = {
            "method": method, "refine_dim": int(refine_dim), "n_trials": len(group), "n_ok": len(ok),
            "n_failed": len(group) - len(ok),
        }
        for m in METRICS:
            values = pd.to_numeric(ok[m], errors="coerce")
            row[f"{m}_mean"] = float(values.mean()) if len(ok) else math.nan
            row[f"{m}_sd"] = float(values.std(ddof=1)) if len(ok) > 1 else math.nan
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows)

    delta_rows = []
    for method, group in summary.groupby("method", sort=True):
        base = group[group["refine_dim"] == 0]
        for _, refined in group[group["refine_dim"] > 0].iterrows():
            row = {"method": method, "refine_dim": int(refined["refine_dim"])}
            for m in METRICS:
                before = float(base[f"{m}_mean"].iloc[0]) if len(base) else math.nan
                row[f"delta_{m}"] = float(refined[f"{m}_mean"]) - before
            delta_rows.append(row)
    columns = ["method", "refine_dim", *(f"delta_{m}" for m in METRICS)]
    return summary, pd.DataFrame(delta_rows, columns=columns)


def _mean_sd(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f} ± {sd:.3f}" if not math.isnan(sd) else f"{mean:.3f}"


def format_table(summary: pd.DataFrame, delta: pd.DataFrame, trials: pd.DataFrame) -> str:
    """The human-readable result: one line per method x refine, failures flagged, then failures."""
    header = f"{'method':<18} {'refine':>6} {'ARI kmeans':>15} {'NMI kmeans':>15} {'ARI gmm':>15} {'NMI gmm':>15}  ok/all"
    lines = [header, "-" * len(header)]
    for _, r in summary.iterrows():
        flag = f"  ({int(r['n_failed'])} FAILED)" if r["n_failed"] else ""
        lines.append(
            f"{r['method']:<18} {('off' if r['refine_dim'] == 0 else str(r['refine_dim'])):>6} "
            + " ".join(f"{_mean_sd(r[f'{m}_mean'], r[f'{m}_sd']):>15}" for m in METRICS)
            + f"  {int(r['n_ok'])}/{int(r['n_trials'])}{flag}"
        )
    if len(delta):
        lines += ["", "refine delta (refined minus unrefined mean):",
                  f"{'method':<18} {'refine':>6} {'dARI km':>9} {'dNMI km':>9} {'dARI gmm':>9} {'dNMI gmm':>9}"]
        for _, r in delta.iterrows():
            lines.append(
                f"{r['method']:<18} {int(r['refine_dim']):>6} "
                + " ".join(f"{r[f'delta_{m}']:>+9.3f}" if not math.isnan(r[f'delta_{m}']) else f"{'-':>9}"
                           for m in METRICS)
            )
    failed = trials[trials["status"] != "ok"]
    if len(failed):
        lines += ["", f"failed trials ({len(failed)}):"]
        for _, r in failed.iterrows():
            lines.append(f"  {r['method']} refine={r['refine_dim']} {r['slide']} seed={r['seed']}: "
                         f"{r['error_type']}: {r['reason']}")
    return "\n".join(lines)


def write_plots(summary: pd.DataFrame, delta: pd.DataFrame, out: Path) -> list[Path]:
    """ari_by_method.png (mean ± sd per method and refine) and refine_delta.png."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    methods = sorted(summary["method"].unique())
    refines = sorted(summary["refine_dim"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(methods) * 2), 4.5), sharey=True)
    width = 0.8 / max(len(refines), 1)
    x = np.arange(len(methods))
    for ax, metric, title in ((axes[0], "ari_kmeans", "ARI (KMeans)"), (axes[1], "ari_gmm", "ARI (GMM, tied)")):
        for i, refine_dim in enumerate(refines):
            part = summary[summary["refine_dim"] == refine_dim].set_index("method").reindex(methods)
            ax.bar(x + (i - (len(refines) - 1) / 2) * width, part[f"{metric}_mean"].fillna(0.0), width,
                   yerr=part[f"{metric}_sd"].fillna(0.0), capsize=2,
                   label="no refine" if refine_dim == 0 else f"refine PCA {refine_dim}")
        ax.set_xticks(x, methods, rotation=35, ha="right")
        ax.set_title(title)
        ax.axhline(0.0, color="black", linewidth=0.6)
    axes[0].set_ylabel("mean ± sd over slides and seeds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "ari_by_method.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(methods) + 2), 4))
    if len(delta):
        for i, refine_dim in enumerate(sorted(delta["refine_dim"].unique())):
            part = delta[delta["refine_dim"] == refine_dim].set_index("method").reindex(methods)
            ax.bar(x + i * 0.35, part["delta_ari_kmeans"].fillna(0.0), 0.35, label=f"PCA {refine_dim}")
        ax.legend(fontsize=8)
    ax.set_xticks(x, methods, rotation=35, ha="right")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("ARI (KMeans): refined minus unrefined")
    ax.set_title("refine delta per method")
    fig.tight_layout()
    path = out / "refine_delta.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


def write_results(trials: pd.DataFrame, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Writes trial, summary and refine-delta tables (CSV + Parquet) and the plots into `out`."""
    summary, delta = summarise(trials)
    for name, frame in (("trials", trials), ("summary", summary), ("refine_delta", delta)):
        frame.to_csv(out / f"{name}.csv", index=False)
        frame.to_parquet(out / f"{name}.parquet", index=False)
    write_plots(summary, delta, out)
    return summary, delta


def _init_ray(config: SweepFusionConfig) -> bool:
    """Connects to RAY_ADDRESS or starts an embedded local Ray; True if this call started it."""
    from gauntlet.runtime.ray_session import start_ray

    return start_ray("sweep fusion", num_cpus=config.num_cpus or os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(SweepFusionConfig, argv, PROG, __doc__.split("\n\n")[0])
    from gauntlet.fusion.errors import SlideSpecError
    from gauntlet.fusion.slide_sources import expand_slide_specs

    try:
        slide_ids = expand_slide_specs(config.slides)
    except SlideSpecError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 2
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(config), indent=2)

    import ray

    tracker = open_tracker(config.report_to, out, name=f"{SWEEP}-{out.resolve().name}", job_type=f"sweep-{SWEEP}",
                           config=dataclasses.asdict(config))
    started = _init_ray(config)
    try:
        trials = run_sweep(config, slide_ids, tracker)
        summary, delta = write_results(trials, out)
        for name, frame in (("trials", trials), ("summary", summary), ("refine_delta", delta)):
            tracker.log_table(f"sweep/{name}", frame.to_dict("records"))
    finally:
        tracker.close()
        if started:
            ray.shutdown()
    print(format_table(summary, delta, trials), flush=True)
    n_ok = int((trials["status"] == "ok").sum())
    _log(f"{n_ok}/{len(trials)} trials ok; tables and plots in {out.resolve()}")
    return 0 if n_ok else 1


if __name__ == "__main__":
    sys.exit(main())
