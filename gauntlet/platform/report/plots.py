"""The report's plots: grouped bars of success rate per policy with Wilson error bars (PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.envs.scene_db import default_origin

if TYPE_CHECKING:
    import pandas as pd


def _bar_panel(ax: Any, table: pd.DataFrame, x_col: str, x_values: list[str], policies: list[str],
               confidence: float) -> None:
    """Grouped bars (one per policy) of success rate with asymmetric Wilson error bars."""
    import numpy as np

    x = np.arange(len(x_values))
    width = 0.8 / max(len(policies), 1)
    for i, policy in enumerate(policies):
        part = table[table["policy"] == policy].groupby(x_col, sort=False).first().reindex(x_values)
        rate = part["rate"].to_numpy(dtype=float)
        low, high = part["ci_low"].to_numpy(dtype=float), part["ci_high"].to_numpy(dtype=float)
        pos = x + (i - (len(policies) - 1) / 2) * width
        ax.bar(pos, np.nan_to_num(rate, nan=0.0), width, label=policy)
        # A cell where nothing ran gets "n/a" instead of a whisker, so it never reads as a measured 0.
        ok = ~np.isnan(rate)
        yerr = np.clip(np.vstack([rate[ok] - low[ok], high[ok] - rate[ok]]), 0.0, None)
        ax.errorbar(pos[ok], rate[ok], yerr=yerr, fmt="none", ecolor="black", capsize=2, linewidth=0.8)
        for p in pos[~ok]:
            ax.text(p, 0.01, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="gray")
    ax.set_xticks(x, x_values, rotation=35, ha="right")
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel(f"success rate ({confidence:.0%} Wilson CI)")


def _width(n_groups: int, n_policies: int) -> float:
    """Figure width (inches) that keeps grouped bars readable."""
    return max(6.0, 0.35 * n_groups * max(n_policies, 2) + 2)


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """success_by_error_type.png, success_by_task.png and success_by_task_error_type.png."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    tables, policies, confidence = report["tables"], report["policies"], report["confidence"]
    written = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def single_panel(table: pd.DataFrame, x_col: str, height: float, title: str, name: str) -> list[str]:
        values = sorted(table[x_col].unique())
        fig, ax = plt.subplots(figsize=(_width(len(values), len(policies)), height))
        _bar_panel(ax, table, x_col, values, policies, confidence)
        ax.set_title(title)
        ax.legend(fontsize=8)
        save(fig, name)
        return values

    error_types = single_panel(tables["by_policy_error_type"], "error_type", 4.2,
                               "success rate per policy and error type (all tasks)", "success_by_error_type.png")
    tasks = single_panel(tables["by_policy_task"], "task", 4.0, "success rate per policy and task (all error types)",
                         "success_by_task.png")

    # One panel per task: error types differ by task (target_shift is stack-only), so each panel
    # shows only the types that task has. Category is a function of error type, so cells map 1:1.
    cells = tables["cells"]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(_width(len(error_types), len(policies)), 3.4 * len(tasks)),
                             squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        part = cells[cells["task"] == task]
        part = part.assign(cell=[e if o == default_origin(e) else f"{e} ({o})"  # harvested drops stand apart
                                 for e, o in zip(part["error_type"], part["origin"], strict=True)])
        _bar_panel(ax, part, "cell", sorted(part["cell"].unique()), policies, confidence)
        ax.set_title(f"task {task}: success rate per policy and error type")
    axes[0, 0].legend(fontsize=8)
    save(fig, "success_by_task_error_type.png")
    return written
