"""The fusion sweep's outputs: summary and refine-delta tables, the printed table and the plots.

Reads the trials table (one row per trial, `gauntlet.fusion.trial.ROW_COLUMNS`); writes
trials/summary/refine_delta as CSV and Parquet, ari_by_method.png and refine_delta.png.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.fusion.trial import METRIC_COLUMNS, STATUS_OK

if TYPE_CHECKING:
    import pandas as pd

TABLES = ("trials", "summary", "refine_delta")  # the files (.csv and .parquet) a sweep writes


def summarise(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary per method x refine_dim with mean/sd of each metric, refine delta per method)."""
    import pandas as pd

    summary_rows = []
    for (method, refine_dim), group in trials.groupby(["method", "refine_dim"], sort=True):
        ok = group[group["status"] == STATUS_OK]
        row: dict[str, Any] = {
            "method": method, "refine_dim": int(refine_dim), "n_trials": len(group), "n_ok": len(ok),
            "n_failed": len(group) - len(ok),
        }
        for m in METRIC_COLUMNS:
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
            for m in METRIC_COLUMNS:
                before = float(base[f"{m}_mean"].iloc[0]) if len(base) else math.nan
                row[f"delta_{m}"] = float(refined[f"{m}_mean"]) - before
            delta_rows.append(row)
    columns = ["method", "refine_dim", *(f"delta_{m}" for m in METRIC_COLUMNS)]
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
            + " ".join(f"{_mean_sd(r[f'{m}_mean'], r[f'{m}_sd']):>15}" for m in METRIC_COLUMNS)
            + f"  {int(r['n_ok'])}/{int(r['n_trials'])}{flag}"
        )
    if len(delta):
        lines += ["", "refine delta (refined minus unrefined mean):",
                  f"{'method':<18} {'refine':>6} {'dARI km':>9} {'dNMI km':>9} {'dARI gmm':>9} {'dNMI gmm':>9}"]
        for _, r in delta.iterrows():
            lines.append(
                f"{r['method']:<18} {int(r['refine_dim']):>6} "
                + " ".join(f"{r[f'delta_{m}']:>+9.3f}" if not math.isnan(r[f'delta_{m}']) else f"{'-':>9}"
                           for m in METRIC_COLUMNS)
            )
    failed = trials[trials["status"] != STATUS_OK]
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


def write_results(trials: pd.DataFrame, out: Path) -> dict[str, pd.DataFrame]:
    """Writes the trial, summary and refine-delta tables (CSV + Parquet) and the plots into `out`;
    returns the tables by name (`TABLES`)."""
    summary, delta = summarise(trials)
    tables = dict(zip(TABLES, (trials, summary, delta), strict=True))
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)
        frame.to_parquet(out / f"{name}.parquet", index=False)
    write_plots(summary, delta, out)
    return tables
