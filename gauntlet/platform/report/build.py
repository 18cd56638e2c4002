"""`gauntlet report RUN [--html]`: an evaluation run as tables, plots and one HTML page.

Reads RUN/results (the results store) and RUN/run.json, and writes into RUN/report/:

- cells.csv: success rate per policy x task x error_type x category, Wilson CI; skipped episodes
  are excluded from the rate's denominator `n` but counted in `skipped`
- by_policy.csv, by_policy_task.csv, by_policy_error_type.csv: the same, coarser
- comparison.csv: policies side by side, rows task / error type, one "rate [lo, hi] n=.." column
  per policy
- classifier_agreement.csv (Fleiss' kappa of the three error classifiers, pairwise Cohen's kappa),
  classifier_accuracy.csv and classifier_accuracy_by_error_type.csv (each vs the injected type)
- separability.csv: Kruskal-Wallis of per-episode success across error types, per policy
- success_by_error_type.png, success_by_task.png, success_by_task_error_type.png
- report.html (with --html): one self-contained page, plots embedded as data URIs

    gauntlet report runs/eval-1 --html
    python -m gauntlet.platform.report runs/eval-1
"""

from __future__ import annotations

import base64
import html as html_lib
import itertools
import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.platform.report.stats import (
    cohen_kappa,
    fleiss_kappa_from_labels,
    kappa_strength,
    kruskal_wallis,
    wilson_interval,
)
from gauntlet.runtime.config_args import option, parse_config

if TYPE_CHECKING:
    import pandas as pd

PROG = "gauntlet report"
REPORT_DIR = "report"
# classifier name -> results column holding its label of the scene
LABEL_COLUMNS: dict[str, str] = {"motion": "label_motion", "grasp": "label_grasp", "command": "label_command"}
# grouping columns whose missing values would otherwise make pandas drop rows silently
_GROUP_COLUMNS = ("policy", "task", "variant", "error_type", "category", "scene_id")
_COUNT_COLUMNS = ["episodes", "skipped", "n", "successes", "rate", "ci_low", "ci_high"]
ALL = "all"  # the pooled row in the side-by-side table


class ReportInputError(ValueError):
    """The run directory cannot be reported on: missing, empty, or its results unreadable."""


def _log(message: str) -> None:
    print(f"[report] {message}", flush=True)


@dataclass(frozen=True)
class ReportConfig:
    """Flags of `gauntlet report`."""

    # evaluation run directory written by `gauntlet eval --out RUN`
    run: str = option(help="evaluation run directory (holds run.json and results/)", positional=True)
    # also write the single self-contained HTML page
    html: bool = option(False, help="also write RUN/report/report.html (self-contained, plots embedded)")
    # confidence level of every Wilson interval in the report
    confidence: float = option(0.95, help="confidence level of the Wilson intervals")

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"--confidence must be in (0, 1), got {self.confidence}")


# ---------------------------------------------------------------------------------------- loading


def _unreadable_file(paths: list[Path]) -> Path | None:
    """The first results file that does not read with the store's schema (to name it in the error)."""
    import pyarrow.parquet as pq

    from gauntlet.platform.eval.results import arrow_schema

    for path in paths:
        try:
            pq.read_table(path, schema=arrow_schema())
        except Exception:  # noqa: BLE001 - any failure means "this is the bad file"
            return path
    return None


def load_results(run_dir: Path | str) -> pd.DataFrame:
    """The run's result rows, typed, with missing grouping values made explicit.

    Raises ReportInputError naming the path when RUN is missing, holds no results, or a results
    file cannot be read. Checks come before `ResultsStore(...)`, which would create RUN/results.
    """
    import pyarrow as pa

    from gauntlet.platform.eval.results import ResultsStore

    run = Path(run_dir)
    if not run.exists():
        raise ReportInputError(f"run directory {run} does not exist")
    if not run.is_dir():
        raise ReportInputError(f"run directory {run} is not a directory")
    parts = sorted((run / "results").glob("part-*.parquet")) if (run / "results").is_dir() else []
    compacted = run / "results.parquet"
    files = ([compacted] if compacted.exists() else []) + parts
    if not files:
        raise ReportInputError(
            f"no results in {run}: expected {run / 'results'}/part-*.parquet or {compacted} "
            f"(did `gauntlet eval --out {run}` finish any episode?)"
        )
    try:
        frame = ResultsStore(run).read()
    except (OSError, ValueError, pa.ArrowException) as exc:
        bad = _unreadable_file(files)
        where = f"results file {bad}" if bad else f"results under {run}"
        raise ReportInputError(f"cannot read {where}: {exc}") from exc
    if frame.empty:
        raise ReportInputError(f"no result rows in {run} (results files hold no episodes)")
    # A null flag is treated as False: an episode recorded without `skipped` ran, and one without
    # `success` did not succeed. The store writes booleans, so this only guards hand-made files.
    for column in ("success", "skipped"):
        frame[column] = frame[column].fillna(False).astype(bool)
    for column in _GROUP_COLUMNS:
        frame[column] = frame[column].fillna("unknown").astype(str)
    return frame


def run_fields(run_config: dict[str, Any]) -> dict[str, Any]:
    """run.json flattened for display and lookups (run_id, policy, scenes, trials, horizon, ...).

    `gauntlet eval` writes {"identity": {...}, "config": {...}, "config_hash": ...}; a flat object is
    accepted too. Identity wins over config over top level, since identity is what a resume checks.
    """
    fields: dict[str, Any] = {}
    for source in (run_config, run_config.get("config"), run_config.get("identity")):
        if isinstance(source, dict):
            fields.update({k: v for k, v in source.items() if not isinstance(v, dict)})
    return fields


def load_run_config(run_dir: Path | str) -> tuple[dict[str, Any], str | None]:
    """(run.json as a dict, a note if it was missing or unreadable). The report works without it."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return {}, f"{path} not found: run configuration not shown"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, f"{path} is unreadable ({exc}): run configuration not shown"
    if not isinstance(data, dict):
        return {}, f"{path} does not hold a JSON object: run configuration not shown"
    return data, None


# ----------------------------------------------------------------------------------------- tables


def success_table(frame: pd.DataFrame, by: list[str], confidence: float = 0.95) -> pd.DataFrame:
    """Success counts and Wilson CI per group: episodes, skipped, n (= ran), successes, rate, CI.

    Skipped episodes never reached the policy, so they say nothing about it: they leave the rate's
    denominator but stay visible in `skipped`. All-skipped groups get rate and CI NaN.
    """
    import pandas as pd

    ran = ~frame["skipped"]
    work = frame.assign(_ran=ran, _ok=frame["success"] & ran)
    rows = []
    for keys, group in work.groupby(by, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        n, successes = int(group["_ran"].sum()), int(group["_ok"].sum())
        low, high = wilson_interval(successes, n, confidence)
        rows.append({
            **dict(zip(by, keys, strict=True)), "episodes": len(group), "skipped": len(group) - n, "n": n,
            "successes": successes, "rate": successes / n if n else math.nan, "ci_low": low, "ci_high": high,
        })
    return pd.DataFrame(rows, columns=[*by, *_COUNT_COLUMNS])


def _policy_order(frame: pd.DataFrame, run_config: dict[str, Any]) -> list[str]:
    """Policies in run.json's order (the order the user named them), then any others sorted."""
    present = set(frame["policy"])
    fields = run_fields(run_config)
    named_raw = fields.get("policy", fields.get("policies")) or []
    named = [p for p in ([named_raw] if isinstance(named_raw, str) else named_raw) if isinstance(p, str)]
    ordered = [p for p in dict.fromkeys(named) if p in present]
    return ordered + sorted(present - set(ordered))


def _format_rate(rate: float, low: float, high: float, n: int) -> str:
    if n == 0:
        return "n/a (all skipped)"
    return f"{rate:.2f} [{low:.2f}, {high:.2f}] n={n}"


def comparison_table(frame: pd.DataFrame, policies: list[str], confidence: float = 0.95) -> pd.DataFrame:
    """Policies side by side: rows (task, error_type) plus a pooled row per task and overall.

    Cells are "rate [lo, hi] n=N" strings for reading; the numbers are in the other tables. A blank
    cell means the policy has no episode there at all.
    """
    import pandas as pd

    fine = success_table(frame, ["task", "error_type", "policy"], confidence)
    per_task = success_table(frame, ["task", "policy"], confidence).assign(error_type=ALL)
    overall = success_table(frame, ["policy"], confidence).assign(task=ALL, error_type=ALL)
    rows = []
    tasks = sorted(frame["task"].unique())
    for task in [*tasks, ALL]:
        if task == ALL:
            blocks = [overall]
        else:
            blocks = [fine[fine["task"] == task], per_task[per_task["task"] == task]]
        for block in blocks:
            for error_type, part in block.groupby("error_type", sort=True):
                row: dict[str, Any] = {"task": task, "error_type": error_type}
                by_policy = part.set_index("policy")
                for policy in policies:
                    if policy in by_policy.index:
                        r = by_policy.loc[policy]
                        row[policy] = _format_rate(r["rate"], r["ci_low"], r["ci_high"], int(r["n"]))
                    else:
                        row[policy] = ""
                rows.append(row)
    return pd.DataFrame(rows, columns=["task", "error_type", *policies])


def classifier_tables(frame: pd.DataFrame, confidence: float = 0.95) -> dict[str, pd.DataFrame]:
    """Agreement among the error classifiers and their accuracy vs the injected error type.

    Labels belong to the scene, not the episode, so each scene counts once (its first row), however
    many policies and trials ran it; skipped scenes count too, since they were still labelled.
    """
    import pandas as pd

    scenes = frame.drop_duplicates(subset=["scene_id"], keep="first")
    labels = {
        name: [None if (v is None or (isinstance(v, float) and math.isnan(v)) or v == "") else str(v)
               for v in scenes[column].tolist()]
        for name, column in LABEL_COLUMNS.items()
    }
    truth = scenes["error_type"].tolist()
    names = list(LABEL_COLUMNS)

    matrix = [list(row) for row in zip(*(labels[n] for n in names), strict=True)]
    complete = [row for row in matrix if all(v is not None for v in row)]
    fleiss = fleiss_kappa_from_labels(complete)
    agreement_rows = [{
        "measure": "fleiss_kappa", "raters": ", ".join(names), "n_scenes": len(complete),
        "percent_agreement": (sum(len(set(r)) == 1 for r in complete) / len(complete)) if complete else math.nan,
        "kappa": fleiss, "strength": kappa_strength(fleiss),
    }]
    for a, b in itertools.combinations(names, 2):
        pairs = [(x, y) for x, y in zip(labels[a], labels[b], strict=True) if x is not None and y is not None]
        kappa = cohen_kappa([x for x, _ in pairs], [y for _, y in pairs])
        agreement_rows.append({
            "measure": "cohen_kappa", "raters": f"{a}, {b}", "n_scenes": len(pairs),
            "percent_agreement": (sum(x == y for x, y in pairs) / len(pairs)) if pairs else math.nan,
            "kappa": kappa, "strength": kappa_strength(kappa),
        })

    accuracy_rows = []
    for name in names:
        judged = [(label, t) for label, t in zip(labels[name], truth, strict=True) if label is not None]
        correct = sum(label == t for label, t in judged)
        low, high = wilson_interval(correct, len(judged), confidence)
        accuracy_rows.append({
            "classifier": name, "n_scenes": len(judged), "correct": correct,
            "accuracy": correct / len(judged) if judged else math.nan, "ci_low": low, "ci_high": high,
            "said_none": sum(label == "none" for label, _ in judged),
        })

    by_type_rows = []
    scene_types = scenes[["error_type", "category"]].reset_index(drop=True)
    for (error_type, category), group in scene_types.groupby(["error_type", "category"], sort=True):
        row: dict[str, Any] = {"error_type": error_type, "category": category, "n_scenes": len(group)}
        for name in names:
            judged = [labels[name][i] for i in group.index if labels[name][i] is not None]
            row[f"accuracy_{name}"] = (sum(v == error_type for v in judged) / len(judged)) if judged else math.nan
        by_type_rows.append(row)

    return {
        "classifier_agreement": pd.DataFrame(agreement_rows),
        "classifier_accuracy": pd.DataFrame(accuracy_rows),
        "classifier_accuracy_by_error_type": pd.DataFrame(
            by_type_rows, columns=["error_type", "category", "n_scenes", *(f"accuracy_{n}" for n in names)]
        ),
    }


def separability_table(frame: pd.DataFrame, policies: list[str]) -> pd.DataFrame:
    """Per policy, Kruskal-Wallis of per-episode success (0/1) across error types.

    A small p means the policy's success depends on the error type (the error types are told apart
    by how the policy fares); epsilon-squared says how strongly. Skipped episodes are left out.
    """
    import pandas as pd

    ran = frame[~frame["skipped"]]
    rows = []
    for policy in policies:
        part = ran[ran["policy"] == policy]
        groups = {str(et): g["success"].astype(float).to_numpy() for et, g in part.groupby("error_type", sort=True)}
        result = kruskal_wallis(groups)
        rows.append({
            "policy": policy, "n_episodes": result["n"], "n_error_types": result["n_groups"],
            "statistic": result["statistic"], "df": result["df"], "p_value": result["p_value"],
            "epsilon_squared": result["epsilon_squared"], "note": result["note"],
        })
    return pd.DataFrame(rows, columns=["policy", "n_episodes", "n_error_types", "statistic", "df", "p_value",
                                       "epsilon_squared", "note"])


def build_report(run_dir: Path | str, confidence: float = 0.95) -> dict[str, Any]:
    """Every table of the report for RUN, plus run metadata and notes.

    Returns {"run_dir", "run_config" (run.json), "confidence", "policies", "n_rows", "n_skipped",
    "tables": {name: DataFrame}, "notes": [str]}. Raises ReportInputError on bad input.
    """
    frame = load_results(run_dir)
    run_config, config_note = load_run_config(run_dir)
    policies = _policy_order(frame, run_config)
    notes = [config_note] if config_note else []

    tables: dict[str, pd.DataFrame] = {
        "by_policy": success_table(frame, ["policy"], confidence),
        "comparison": comparison_table(frame, policies, confidence),
        "cells": success_table(frame, ["policy", "task", "error_type", "category"], confidence),
        "by_policy_task": success_table(frame, ["policy", "task"], confidence),
        "by_policy_error_type": success_table(frame, ["policy", "error_type", "category"], confidence),
        **classifier_tables(frame, confidence),
        "separability": separability_table(frame, policies),
    }

    # Every table lists policies in the same (run.json) order as the side-by-side columns.
    rank = {policy: i for i, policy in enumerate(policies)}
    for name, table in tables.items():
        if "policy" in table.columns:
            tables[name] = table.sort_values("policy", key=lambda col: col.map(rank), kind="stable").reset_index(
                drop=True)

    n_skipped = int(frame["skipped"].sum())
    if n_skipped:
        reasons = frame.loc[frame["skipped"], "skip_reason"].fillna("").replace("", "(no reason given)")
        top = ", ".join(f"{reason} ({count})" for reason, count in reasons.value_counts().head(3).items())
        notes.append(f"{n_skipped} of {len(frame)} episodes were skipped and are excluded from rates: {top}")
    run_ids = sorted(frame["run_id"].dropna().astype(str).unique())
    if len(run_ids) > 1:
        notes.append(f"results hold {len(run_ids)} run ids ({', '.join(run_ids)}): they are pooled")
    for row in tables["classifier_agreement"].itertuples():
        if math.isnan(row.kappa) and row.n_scenes:
            notes.append(f"{row.measure} ({row.raters}) is undefined: every label falls in one category")
    for row in tables["separability"].itertuples():
        if row.note:
            notes.append(f"Kruskal-Wallis for {row.policy}: {row.note}")

    return {
        "run_dir": str(run_dir), "run_config": run_config, "confidence": confidence, "policies": policies,
        "run_ids": run_ids, "n_rows": len(frame), "n_skipped": n_skipped, "tables": tables, "notes": notes,
    }


# ------------------------------------------------------------------------------------------ plots


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

    by_type = tables["by_policy_error_type"]
    error_types = sorted(by_type["error_type"].unique())
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(error_types) * max(len(policies), 2) + 2), 4.2))
    _bar_panel(ax, by_type, "error_type", error_types, policies, confidence)
    ax.set_title("success rate per policy and error type (all tasks)")
    ax.legend(fontsize=8)
    save(fig, "success_by_error_type.png")

    by_task = tables["by_policy_task"]
    tasks = sorted(by_task["task"].unique())
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(tasks) * max(len(policies), 2) + 2), 4.0))
    _bar_panel(ax, by_task, "task", tasks, policies, confidence)
    ax.set_title("success rate per policy and task (all error types)")
    ax.legend(fontsize=8)
    save(fig, "success_by_task.png")

    # One panel per task: error types differ by task (target_shift is stack-only), so each panel
    # shows only the types that task has. Category is a function of error type, so cells map 1:1.
    cells = tables["cells"]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(6.0, 0.35 * len(error_types) * max(len(policies), 2) + 2),
                                                      3.4 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        part = cells[cells["task"] == task]
        _bar_panel(ax, part, "error_type", sorted(part["error_type"].unique()), policies, confidence)
        ax.set_title(f"task {task}: success rate per policy and error type")
    axes[0, 0].legend(fontsize=8)
    save(fig, "success_by_task_error_type.png")
    return written


# ------------------------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.meta td { text-align: left; } .note { color: #8a4b00; }
"""


def _float_format(value: float) -> str:
    return f"{value:.3g}" if value != 0 and abs(value) < 1e-3 else f"{value:.3f}"


def _html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=_float_format, na_rep="–", border=0, escape=True)


def render_html(report: dict[str, Any], plots: list[Path]) -> str:
    """One self-contained page: no external scripts, styles or images (plots are data URIs)."""
    esc = html_lib.escape
    tables, cfg = report["tables"], run_fields(report["run_config"])
    run_id = str(cfg.get("run_id") or ", ".join(report["run_ids"]) or Path(report["run_dir"]).name)
    conf = f"{report['confidence']:.0%}"
    meta_rows = [("run directory", report["run_dir"]), ("episodes recorded", report["n_rows"]),
                 ("episodes skipped", report["n_skipped"]), ("policies", ", ".join(report["policies"])),
                 ("generated", datetime.now(UTC).isoformat(timespec="seconds"))]
    meta_rows += [(f"run.json: {k}", v if isinstance(v, str | int | float | bool) else json.dumps(v))
                  for k, v in cfg.items()]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>gauntlet report: {esc(run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Evaluation report: {esc(run_id)}</h1>",
        '<table class="meta">' + "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>"
                                         for k, v in meta_rows) + "</table>",
    ]
    if report["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f'<li class="note">{esc(n)}</li>' for n in report["notes"])
                     + "</ul>")
    parts += [
        f"<h2>Success rate per policy</h2><p>Rate over episodes that ran (skipped ones excluded, counted in "
        f"<code>skipped</code>), with {conf} Wilson intervals.</p>", _html_table(tables["by_policy"]),
        "<h2>Policies side by side</h2><p>Rate [CI] and episodes that ran, per task and error type; "
        f"<code>{ALL}</code> rows pool the rows above them.</p>", _html_table(tables["comparison"]),
        "<h2>Plots</h2>",
    ]
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{esc(path.stem)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{esc(path.name)}</figcaption></figure>")
    parts += [
        "<h2>Success rate per policy, task, error type and category</h2>", _html_table(tables["cells"]),
        "<h2>Per policy and error type</h2>", _html_table(tables["by_policy_error_type"]),
        "<h2>Per policy and task</h2>", _html_table(tables["by_policy_task"]),
        "<h2>Error classifiers</h2><p>Three rule-based classifiers label each scene (each scene counted once). "
        "Agreement: Fleiss' kappa across all three, Cohen's kappa per pair (Landis &amp; Koch wording); "
        "accuracy against the injected error type.</p>",
        _html_table(tables["classifier_agreement"]), _html_table(tables["classifier_accuracy"]),
        _html_table(tables["classifier_accuracy_by_error_type"]),
        "<h2>How well error types are told apart</h2><p>Kruskal&ndash;Wallis test of per-episode success "
        "across error types, per policy: a small p means success depends on the error type; "
        "epsilon-squared (0..1) is the effect size.</p>", _html_table(tables["separability"]),
        "</body></html>",
    ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------- output


def write_report_files(report: dict[str, Any], out: Path | str, html: bool = True) -> dict[str, Path]:
    """Writes every table as CSV, the plots and (optionally) the HTML page into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, frame in report["tables"].items():
        path = out / f"{name}.csv"
        frame.to_csv(path, index=False)
        paths[name] = path
    plots = write_plots(report, out)
    paths.update({p.stem: p for p in plots})
    if html:
        path = out / "report.html"
        # Write then rename, so a reader never sees half a page.
        tmp = path.with_suffix(".html.tmp")
        tmp.write_text(render_html(report, plots), encoding="utf-8")
        tmp.replace(path)
        paths["html"] = path
    return paths


def write_report(run_dir: Path | str, html: bool = True, confidence: float = 0.95) -> dict[str, Path]:
    """Builds the report of RUN and writes it into RUN/report/; returns {artifact name: path}."""
    return write_report_files(build_report(run_dir, confidence), Path(run_dir) / REPORT_DIR, html=html)


def _num(value: float, spec: str = ".3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_summary(report: dict[str, Any]) -> str:
    """The readable stdout summary: rates per policy, policies side by side, classifiers, separability."""
    tables = report["tables"]
    conf = f"{report['confidence']:.0%}"
    lines = [f"run {report['run_dir']}: {report['n_rows']} episodes ({report['n_skipped']} skipped), "
             f"policies: {', '.join(report['policies'])}", ""]
    header = f"{'policy':<24} {'rate':>6} {conf + ' CI':>16} {'n':>6} {'skipped':>8}"
    lines += [f"success rate per policy (skipped excluded, {conf} Wilson CI)", header, "-" * len(header)]
    for r in tables["by_policy"].itertuples():
        ci = f"[{_num(r.ci_low)}, {_num(r.ci_high)}]"
        lines.append(f"{r.policy:<24} {_num(r.rate):>6} {ci:>16} {r.n:>6} {r.skipped:>8}")
    lines += ["", "policies side by side (rate [CI] n=episodes that ran)",
              tables["comparison"].to_string(index=False), ""]
    lines.append("error classifiers (each scene once):")
    for r in tables["classifier_agreement"].itertuples():
        lines.append(f"  {r.measure:<13} {r.raters:<24} kappa {_num(r.kappa):>6} ({r.strength}), "
                     f"agree {_num(r.percent_agreement, '.0%')} of {r.n_scenes} scenes")
    for r in tables["classifier_accuracy"].itertuples():
        lines.append(f"  accuracy {r.classifier:<10} {_num(r.accuracy):>6} [{_num(r.ci_low)}, {_num(r.ci_high)}] "
                     f"({r.correct}/{r.n_scenes}, said none {r.said_none})")
    lines += ["", "error types told apart (Kruskal-Wallis on per-episode success, per policy):"]
    for r in tables["separability"].itertuples():
        text = (f"H {_num(r.statistic, '.2f')}, df {r.df}, p {_num(r.p_value, '.3g')}, "
                f"eps^2 {_num(r.epsilon_squared)}")
        lines.append(f"  {r.policy:<24} {text}" + (f"  ({r.note})" if r.note else ""))
    if report["notes"]:
        lines += ["", "notes:", *(f"  - {n}" for n in report["notes"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(ReportConfig, argv, PROG, __doc__.split("\n\n")[0])
    run = Path(config.run)
    try:
        report = build_report(run, confidence=config.confidence)
    except ReportInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 1
    out = run / REPORT_DIR
    try:
        paths = write_report_files(report, out, html=config.html)
    except OSError as exc:
        print(f"{PROG}: cannot write the report into {out}: {exc}", file=sys.stderr, flush=True)
        return 1
    print(format_summary(report), flush=True)
    _log(f"wrote {len(paths)} files into {out}" + (f"; open {paths['html']}" if "html" in paths else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
