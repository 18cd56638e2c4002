"""The throughput sweep's outputs: its progress lines, the trials table (one row per Tune trial),
trials.csv/.parquet, report.json and report.md (the recommendation, the ladder's path, every trial)
and the table printed at the end."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.platform.sweeps.job import death_reason
from gauntlet.platform.sweeps.ram_floor import GB
from gauntlet.platform.sweeps.search import PlanSummary
from gauntlet.platform.sweeps.throughput_trials import STATUS_ERROR, STATUS_OK, STATUS_RAM_FLOOR, RamLimits
from gauntlet.runtime.atomic_files import atomic_write
from gauntlet.runtime.manifests import write_json

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.platform.sweeps.throughput import SweepThroughputConfig


def describe_knobs(knobs: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in knobs.items())


# what a trial reports (throughput_trials.run_trial), in the order the table shows it
RESULT_COLUMNS = (
    "status", "samples_per_s", "episodes_per_min", "mean_batch_size", "max_batch_size_seen", "episodes", "skipped",
    "batches_per_s", "samples", "batches", "measured_s", "first_batch_s", "eval_wall_s", "peak_tree_rss_mb",
    "tree_growth_mb", "min_available_mb", "floor_mb", "breach_available_mb", "breach_tree_rss_mb", "breach_decline_mb_per_s",
    "trial_s", "reason",
)


def describe_grid_point(cfg: dict[str, Any]) -> str:
    return describe_knobs(cfg.get("knobs", {}))


def describe_ladder_step(cfg: dict[str, Any]) -> str:
    step = cfg.get("step", {})
    moved = f"moved {step['changed_knob']}" if step.get("changed_knob") else "baseline"
    return f"(ladder round {step.get('round', '?')}, {moved}) {describe_grid_point(cfg)}"


def outcome(metric: str) -> Callable[[dict[str, Any]], str]:
    """What a finished trial's progress line says it measured."""

    def said(r: dict[str, Any]) -> str:
        memory = (f"peak tree RSS {r.get('peak_tree_rss_mb', math.nan):.0f} MB, min available "
                  f"{r.get('min_available_mb', math.nan) / 1024:.2f} GB")
        if r.get("status") == STATUS_OK:
            return f"{r.get(metric, math.nan):.1f} {metric.replace('_per_', '/')} ({memory})"
        return f"{str(r.get('status', STATUS_ERROR)).upper()} {r.get('reason', '')} ({memory})"

    return said


def trial_row(result: Any, mode: str, metric: str, accepted: Mapping[int, bool]) -> dict[str, Any]:
    """One Tune result -> one table row: the trial's index (and ladder step), knobs and measurements."""
    cfg = result.config or {}
    step = cfg.get("step", {})
    row: dict[str, Any] = {"trial": int(step.get("index", -1))}
    if mode == "ladder":
        row.update(round=int(step.get("round", 0)), changed_knob=str(step.get("changed_knob", "")),
                   kept=bool(accepted.get(row["trial"], False)))
    row.update(cfg.get("knobs", {}))
    died = death_reason(result)
    if died is not None:
        row.update(status=STATUS_ERROR, reason=died[:500])
        row[metric] = math.nan
    else:
        row.update({k: v for k, v in result.metrics.items() if k in RESULT_COLUMNS or k == metric})
    return row


def trials_table(rows: list[dict[str, Any]], knob_names: list[str], metric: str, mode: str) -> pd.DataFrame:
    """The trials table: index, ladder step, knobs, status and metric first, the reason last."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    lead = ["trial", *(["round", "changed_knob", "kept"] if mode == "ladder" else []), *knob_names, "status",
            metric]
    rest = [c for c in RESULT_COLUMNS if c in frame.columns and c not in lead and c != "reason"]
    frame = frame.reindex(columns=[*lead, *rest, "reason"])
    frame["reason"] = frame["reason"].fillna("").astype(str)
    frame["status"] = frame["status"].fillna(STATUS_ERROR).astype(str)
    for col in ("samples", "batches", "episodes", "skipped", "max_batch_size_seen"):
        if col in frame.columns and frame[col].notna().all():
            frame[col] = frame[col].astype("int64")
    if mode == "ladder":
        frame["kept"] = frame["kept"].astype(bool)
    return frame.sort_values("trial", kind="stable").reset_index(drop=True)


def recommendation(summary: PlanSummary, metric: str) -> dict[str, Any] | None:
    """The configuration to use: the ladder's end point, or the grid's fastest ok trial."""
    if summary.recommended is None:
        return None
    return {"knobs": summary.recommended, metric: summary.metric}


def format_table(trials: pd.DataFrame, knob_names: list[str], metric: str) -> str:
    extra = "mean_batch_size" if "mean_batch_size" in trials.columns else None
    head = ["#", *knob_names, "status", metric, *([extra] if extra else []), "peak RSS MB", "min avail GB", "note"]
    body = []
    for _, r in trials.iterrows():
        note = ""
        if "kept" in trials.columns:
            note = "baseline" if not r["changed_knob"] else (f"moved {r['changed_knob']}: "
                                                             + ("kept" if r["kept"] else "not kept"))
        if r["status"] != STATUS_OK:
            note = (note + "; " if note else "") + str(r["reason"])[:90]
        cells = [str(int(r["trial"])), *(str(r[k]) for k in knob_names), str(r["status"]), _num(r[metric])]
        if extra:
            cells.append(_num(r[extra], 2))
        cells += [_num(r.get("peak_tree_rss_mb"), 0), _num(r.get("min_available_mb", math.nan) / 1024, 2), note]
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    lines = [fmt.format(*head), "-" * (sum(widths[:-1]) + 2 * len(widths) + 8)]
    lines += [fmt.format(*cells) for cells in body]
    return "\n".join(lines)


def _num(value: Any, digits: int = 1) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def write_report(trials: pd.DataFrame, summary: PlanSummary, config: SweepThroughputConfig, knob_names: list[str],
                 limits: RamLimits, out: Path, eval_runs_dir: str | None = None) -> dict[str, Any]:
    """trials.csv/.parquet, report.json and report.md; returns the report object."""
    metric = config.metric
    trials.to_csv(out / "trials.csv", index=False)
    trials.to_parquet(out / "trials.parquet", index=False)
    counts = {s: int((trials["status"] == s).sum()) for s in (STATUS_OK, STATUS_RAM_FLOOR, STATUS_ERROR)}
    rec = recommendation(summary, metric)
    report = {
        "target": config.target, "mode": config.mode, "metric": metric, "ram_floor_gb": limits.floor_bytes / GB,
        "ram_headroom_gb": limits.headroom_bytes / GB, "eval_runs_dir": eval_runs_dir,
        "knobs": {k: list(v) for k, v in summary_knobs(trials, knob_names).items()}, "trials": int(len(trials)),
        "counts": counts, "recommended": rec, "ladder_path": summary.path,
    }
    write_json(out / "report.json", report, indent=2)
    lines = [f"# Throughput sweep: {config.target} ({config.mode})", "",
             f"- metric: {metric} (higher is better); RAM floor {limits.floor_bytes / GB:.2f} GB of host "
             f"available memory", f"- trials: {len(trials)} ({counts['ok']} ok, {counts['ram_floor']} stopped at "
             f"the RAM floor, {counts['error']} errors)", ""]
    if rec:
        lines += ["## Recommendation", "", f"`{describe_knobs(rec['knobs'])}`: {rec[metric]:.2f} {metric} — the fastest "
                  "configuration that stayed above the RAM floor" + (" (where the ladder ended)"
                                                                      if config.mode == "ladder" else ""), ""]
    else:
        lines += ["## Recommendation", "", "none: no configuration finished above the RAM floor", ""]
    if summary.path:
        lines += ["## Ladder path", ""]
        for s in summary.path:
            what = "baseline" if not s["knob"] else f"round {s['round']}: {s['knob']} -> {s['value']}"
            verdict = "the start" if not s["knob"] else ("kept" if s["kept"] else "not kept")
            lines.append(f"- {what}: {_num(s['metric'], 2)} {metric} — {verdict}")
        lines.append("")
    lines += ["## Trials", "", "```", format_table(trials, knob_names, metric), "```", ""]
    failed = trials[trials["status"] != STATUS_OK]
    if len(failed):
        lines += ["## Stopped or failed", ""]
        lines += [f"- trial {int(r['trial'])} `{describe_knobs({k: r[k] for k in knob_names})}`: {r['status']}: "
                  f"{r['reason']}" for _, r in failed.iterrows()]
        lines.append("")
    text = "\n".join(lines)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))
    return report


def summary_knobs(trials: pd.DataFrame, knob_names: list[str]) -> dict[str, list[Any]]:
    """The values each knob took (plain Python values, sorted)."""
    return {k: sorted({v.item() if hasattr(v, "item") else v for v in trials[k].dropna()})
            for k in knob_names if k in trials.columns}
