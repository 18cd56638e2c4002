"""`gauntlet report RUN [--html]`: an evaluation run as tables, plots and one HTML page.

Reads RUN/results (the results store) and RUN/run.json, and writes into RUN/report/:

- cells.csv: success rate per policy x task x error_type x category x origin (injected, nominal,
  harvested), Wilson CI; skipped episodes are excluded from the rate's denominator `n` but counted
  in `skipped`
- by_policy.csv, by_policy_task.csv, by_policy_error_type.csv, by_policy_origin.csv: the same, coarser
- comparison.csv: policies side by side, rows task / error type, one "rate [lo, hi] n=.." column
  per policy
- recovery_gap.csv: per policy and task, success on nominal scenes (error type `none`: the task's
  start state) next to success on error-recovery scenes, and the gap nominal - recovery with its CI
- classifier_agreement.csv (Fleiss' kappa of the three error classifiers, pairwise Cohen's kappa),
  classifier_accuracy.csv and classifier_accuracy_by_error_type.csv (each vs the injected type), on
  error-recovery scenes only
- separability.csv: Kruskal-Wallis of per-episode success across (injected) error types, per policy
- success_by_error_type.png, success_by_task.png, success_by_task_error_type.png
- report.html (with --html): one self-contained page, plots embedded as data URIs

    gauntlet report runs/eval-1 --html
    python -m gauntlet.platform.report runs/eval-1
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.platform.eval.results import TRANSIENT
from gauntlet.platform.eval.video import read_videos
from gauntlet.platform.report.html import render_html
from gauntlet.platform.report.load import ReportInputError, ReportWriteError, load_results, load_run_config
from gauntlet.platform.report.plots import write_plots
from gauntlet.platform.report.tables import (
    classifier_tables,
    comparison_table,
    is_nominal,
    policy_order,
    recovery_gap_display,
    recovery_gap_table,
    separability_table,
    success_table,
)
from gauntlet.runtime.atomic_files import atomic_write
from gauntlet.runtime.config_args import option, parse_config, run_command

if TYPE_CHECKING:
    import pandas as pd

PROG = "gauntlet report"
REPORT_DIR = "report"  # RUN/report/: where every artifact goes


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


def build_report(run_dir: Path | str, confidence: float = 0.95) -> dict[str, Any]:
    """Every table of the report for RUN, plus run metadata and notes.

    Returns {"run_dir", "run_config" (run.json), "confidence", "policies", "n_rows", "n_skipped",
    "n_skipped_transient" (of those, skips `--resume` runs again), "tables": {name: DataFrame},
    "notes": [str]}. Raises ReportInputError on bad input.
    """
    frame = load_results(run_dir)
    run_config, config_note = load_run_config(run_dir)
    policies = policy_order(frame, run_config)
    notes = [config_note] if config_note else []
    # Classifiers and separability are about injected errors: nominal scenes have none to tell apart.
    errors = frame[~is_nominal(frame)]

    tables: dict[str, pd.DataFrame] = {
        "by_policy": success_table(frame, ["policy"], confidence),
        "comparison": comparison_table(frame, policies, confidence),
        "recovery_gap": recovery_gap_table(frame, policies, confidence),
        "cells": success_table(frame, ["policy", "task", "error_type", "category", "origin"], confidence),
        "by_policy_origin": success_table(frame, ["policy", "origin"], confidence),
        "by_policy_task": success_table(frame, ["policy", "task"], confidence),
        "by_policy_error_type": success_table(frame, ["policy", "error_type", "category"], confidence),
        **classifier_tables(errors, confidence),
        "separability": separability_table(errors, policies),
    }

    # Every table lists policies in the same (run.json) order as the side-by-side columns.
    rank = {policy: i for i, policy in enumerate(policies)}
    for name, table in tables.items():
        if "policy" in table.columns:
            tables[name] = table.sort_values("policy", key=lambda col: col.map(rank), kind="stable").reset_index(
                drop=True)

    n_skipped = int(frame["skipped"].sum())
    transient = int((frame["skipped"] & (frame["skip_kind"] == TRANSIENT)).sum())
    run_ids = sorted(frame["run_id"].dropna().astype(str).unique())
    notes += _notes(frame, tables, n_skipped, transient, run_ids)

    return {
        "run_dir": str(run_dir), "run_config": run_config, "confidence": confidence, "policies": policies,
        "run_ids": run_ids, "n_rows": len(frame), "n_skipped": n_skipped,
        "n_skipped_transient": transient, "tables": tables, "notes": notes,
        "videos": read_videos(Path(run_dir)),
    }


def _notes(frame: pd.DataFrame, tables: dict[str, pd.DataFrame], n_skipped: int, transient: int,
           run_ids: list[str]) -> list[str]:
    """What a reader must know to read the tables right: skips, pooled run ids, missing baselines,
    undefined statistics."""
    notes = []
    if n_skipped:
        reasons = frame.loc[frame["skipped"], "skip_reason"].fillna("").replace("", "(no reason given)")
        top = ", ".join(f"{reason} ({count})" for reason, count in reasons.value_counts().head(3).items())
        notes.append(f"{n_skipped} of {len(frame)} episodes were skipped and are excluded from rates: {top}; "
                     f"{transient} transient (`gauntlet eval --resume` runs them again: policy unreachable, "
                     f"timeout, actor died), {n_skipped - transient} permanent")
    if len(run_ids) > 1:
        notes.append(f"results hold {len(run_ids)} run ids ({', '.join(run_ids)}): they are pooled")
    if tables["recovery_gap"].empty:
        notes.append("no nominal scenes ran in this run, so there is no recovery gap: generate them with "
                     "`gauntlet scenes generate --nominal` (or `--error-types none`)")
    for row in tables["classifier_agreement"].itertuples():
        if math.isnan(row.kappa) and row.n_scenes:
            notes.append(f"{row.measure} ({row.raters}) is undefined: every label falls in one category")
    for row in tables["separability"].itertuples():
        if row.note:
            notes.append(f"Kruskal-Wallis for {row.policy}: {row.note}")
    return notes


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
        page = render_html(report, plots)
        atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))  # never half a page
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
    lines = [f"run {report['run_dir']}: {report['n_rows']} episodes ({report['n_skipped']} skipped, "
             f"{report.get('n_skipped_transient', 0)} of them transient), "
             f"policies: {', '.join(report['policies'])}", ""]
    header = f"{'policy':<24} {'rate':>6} {conf + ' CI':>16} {'n':>6} {'skipped':>8}"
    lines += [f"success rate per policy (skipped excluded, {conf} Wilson CI)", header, "-" * len(header)]
    for r in tables["by_policy"].itertuples():
        ci = f"[{_num(r.ci_low)}, {_num(r.ci_high)}]"
        lines.append(f"{r.policy:<24} {_num(r.rate):>6} {ci:>16} {r.n:>6} {r.skipped:>8}")
    lines += ["", "policies side by side (rate [CI] n=episodes that ran)",
              tables["comparison"].to_string(index=False), ""]
    if not tables["recovery_gap"].empty:
        lines += [f"nominal vs recovery success per policy and task (gap = nominal - recovery, {conf} CI)",
                  recovery_gap_display(tables["recovery_gap"]).to_string(index=False), ""]
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

    def work() -> int:
        run = Path(config.run)
        report = build_report(run, confidence=config.confidence)
        out = run / REPORT_DIR
        try:
            paths = write_report_files(report, out, html=config.html)
        except OSError as exc:
            raise ReportWriteError(f"cannot write the report into {out}: {exc}") from exc
        print(format_summary(report), flush=True)
        _log(f"wrote {len(paths)} files into {out}" + (f"; open {paths['html']}" if "html" in paths else ""))
        return 0

    return run_command(PROG, work, {ReportInputError: 1, ReportWriteError: 1})


if __name__ == "__main__":
    sys.exit(main())
