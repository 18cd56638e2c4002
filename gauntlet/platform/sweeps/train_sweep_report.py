"""`gauntlet sweep train`'s rows and report: each trial's outcome from Tune, the survivors' evaluation and
their paired gain over the base, the trials table (trials.csv, printed) and summary.json.

A trial is `completed` when its training ran every step (it wrote its artifact), `stopped` when ASHA
stopped it before, `error` when its process failed. Only completed trials have a checkpoint to evaluate;
an evaluation that fails is that trial's `error`, and the other trials are still scored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.platform.sweeps.train_sweep_trial import read_reports
from gauntlet.runtime.atomic_files import atomic_write
from gauntlet.runtime.manifests import write_json

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.platform.sweeps.train_sweep import SweepTrainConfig
    from gauntlet.platform.train.config import TrainConfig

COMPLETED, STOPPED, ERROR = "completed", "stopped", "error"  # a trial's status
EVAL_DIR = "eval"  # OUT/eval/NAME: one evaluation run per checkpoint
BASE_RUN = "base"  # the base's evaluation run name
GAIN_COLUMNS = ["success", "episodes", "gain", "gain_ci_low", "gain_ci_high", "mcnemar_p"]


@dataclass(frozen=True)
class TrialPoint:
    """One configuration of the sweep."""

    index: int  # position in the sweep, from 0 (its directory is trials/tNNN)
    knobs: dict[str, Any]  # the swept fields' values
    train: TrainConfig  # its whole `gauntlet train` config


def describe_point(knobs: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in knobs.items())


def outcome(result: dict[str, Any]) -> str:
    """The progress line's outcome of a finished trial (from its last report)."""
    if "val_loss" not in result:
        return "no report"
    return f"val_loss {result['val_loss']:.4f} at step {result.get('step', '?')}"


def error_line(error: BaseException | str) -> str:
    """The last line of an error's text (a remote error's text ends with its cause)."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def trial_rows(grid: Any, points: list[TrialPoint]) -> list[dict[str, Any]]:
    """One row per trial of Tune's result grid: knobs, status, reports, last and best val_loss, checkpoint.
    The numbers are the trial's recorded reports (a resumed sweep's Tune saw only the reports since)."""
    by_index = {p.index: p for p in points}
    rows = []
    for result in grid:
        point = by_index[int(result.config["point"]["index"])]
        history = read_reports(point.train.train_dir)
        last = history[-1] if history else {}
        losses = [float(r["val_loss"]) for r in history if r.get("val_loss") is not None]
        done = (point.train.train_dir / "summary.json").is_file()
        status = ERROR if result.error is not None else COMPLETED if done else STOPPED
        rows.append({"trial": f"t{point.index:03d}", **point.knobs, "status": status,
                     "reports": len(history), "step": int(last.get("step", 0)),
                     "val_loss": last.get("val_loss", math.nan),
                     "best_val_loss": min(losses) if losses else math.nan,
                     "checkpoint": str(Path(point.train.out)) if done else "",
                     "error": error_line(result.error) if result.error is not None else ""})
    return sorted(rows, key=lambda r: r["trial"])


def eval_target(train: TrainConfig, checkpoint: str) -> str:
    """`gauntlet eval --policy` of a trial's artifact: an adapter on its base, or the checkpoint itself."""
    summary = json.loads((Path(checkpoint) / "train" / "summary.json").read_text())
    if summary.get("mode") == "lora":
        return f"{train.policy}={train.base}@{checkpoint}"
    return f"{train.policy}={checkpoint}"


def _evaluate(config: SweepTrainConfig, target: str, name: str) -> Path:
    """One `gauntlet eval` run of `target` on --eval-scenes into OUT/eval/NAME (continued when it exists)."""
    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval
    from gauntlet.platform.eval.status import RUN_MANIFEST

    run_dir = Path(config.out).resolve() / EVAL_DIR / name
    run_eval(EvalConfig(scenes=str(Path(config.eval_scenes).resolve()), policy=(target,), out=str(run_dir),
                        trials=config.eval_trials, horizon=config.eval_horizon, limit=config.eval_limit,
                        actors=config.eval_actors, resume=(run_dir / RUN_MANIFEST).exists()))
    return run_dir


def _base_target(config: SweepTrainConfig, points: list[TrialPoint], rows: list[dict[str, Any]]) -> tuple[str, str]:
    """(eval target of the base, what it is): --base, else the trials' training --base, else the first
    configuration's trial (or the first completed one when ASHA stopped it)."""
    first = points[0].train
    if config.base:
        return f"{first.policy}={Path(config.base).resolve()}", f"--base {config.base}"
    if first.base:
        return f"{first.policy}={first.base}", f"the trials' training base {first.base}"
    done = [r for r in rows if r["status"] == COMPLETED]
    row = next((r for r in done if r["trial"] == rows[0]["trial"]), done[0])
    point = points[int(row["trial"][1:])]
    return eval_target(point.train, row["checkpoint"]), f"trial {row['trial']} ({describe_point(point.knobs)})"


def _score(config: SweepTrainConfig, target: str, name: str) -> pd.DataFrame:
    from gauntlet.platform.report.load import load_results

    return load_results(_evaluate(config, target, name))


def score_survivors(config: SweepTrainConfig, points: list[TrialPoint],
                    rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Evaluates the base and every completed trial; adds GAIN_COLUMNS to their rows (gain = trial's
    success - base's, paired by episode). A failed evaluation is its row's `error` (the base's: every
    row's). Returns {"base": what the base is, "base_success", "base_run"[, "error"]}."""
    from gauntlet.platform.report.compare import pair_rows, paired_stats

    done = [r for r in rows if r["status"] == COMPLETED]
    if not done:
        return None
    base_target, base_name = _base_target(config, points, rows)
    scored = {"base": base_name, "base_run": str(Path(config.out).resolve() / EVAL_DIR / BASE_RUN),
              "base_success": math.nan}
    # One run's failure, whatever raised it (its inputs, its rollouts, Serve refusing to deploy the
    # checkpoint), is its row's error: the other trials' scores and the tables are kept.
    try:
        base = _score(config, base_target, BASE_RUN)
    except Exception as exc:  # noqa: BLE001 - recorded, as above
        for row in done:
            row["error"] = f"evaluation of the base failed: {error_line(exc)}"
        return {**scored, "error": error_line(exc)}
    for row in done:
        point = points[int(row["trial"][1:])]
        try:
            mine = _score(config, eval_target(point.train, row["checkpoint"]), row["trial"])
        except Exception as exc:  # noqa: BLE001 - recorded, as above
            row["error"] = f"evaluation failed: {error_line(exc)}"
            continue
        stats = paired_stats(pair_rows(mine, base)[0])
        ran = mine[~mine["skipped"]]
        row.update(success=float(ran["success"].mean()) if len(ran) else math.nan, episodes=len(ran),
                   gain=stats["diff"], gain_ci_low=stats["diff_ci_low"], gain_ci_high=stats["diff_ci_high"],
                   mcnemar_p=stats["mcnemar_p"])
    ran = base[~base["skipped"]]
    return {**scored, "base_success": float(ran["success"].mean()) if len(ran) else math.nan}


def _best(table: pd.DataFrame, scored: bool) -> dict[str, Any] | None:
    """The completed trial with the highest success (ties: lowest val_loss); unscored: lowest val_loss."""
    done = table[table["status"] == COMPLETED]
    if done.empty:
        return None
    keys, ascending = (["success", "val_loss"], [False, True]) if scored else (["val_loss"], [True])
    return done.sort_values(keys, ascending=ascending, kind="stable").iloc[0].to_dict()


def finish_table(config: SweepTrainConfig, table: pd.DataFrame, knobs: list[str],
                 scored: dict[str, Any] | None) -> dict[str, Any]:
    """trials.csv and summary.json in --out; {"table", "text" (the printed table), "lines", "best"}."""
    for column in GAIN_COLUMNS:
        if column not in table:
            table[column] = math.nan
    columns = ["trial", *knobs, "status", "reports", "step", "val_loss", "best_val_loss", *GAIN_COLUMNS,
               "checkpoint", "error"]
    table = table[columns]
    out = Path(config.out)
    atomic_write(out / "trials.csv", lambda tmp: table.to_csv(tmp, index=False))
    best = _best(table, scored is not None)
    counts = table["status"].value_counts().to_dict()
    lines = [f"{counts.get(COMPLETED, 0)} completed, {counts.get(STOPPED, 0)} stopped by ASHA, "
             f"{counts.get(ERROR, 0)} failed; table in {(out / 'trials.csv').resolve()}"]
    if scored:
        lines.append(f"base: {scored['base']}, " + (f"evaluation failed: {scored['error']}" if "error" in scored
                                                    else f"success {scored['base_success']:.3f}"))
    if best:
        line = f"best: {describe_point({k: best[k] for k in knobs})} ({best['trial']}), val_loss {best['val_loss']:.4f}"
        if scored:
            line += (f", success {best['success']:.3f}, paired gain over the base {best['gain']:+.3f} "
                     f"[{best['gain_ci_low']:+.3f}, {best['gain_ci_high']:+.3f}], McNemar p {best['mcnemar_p']:.3g}")
        lines.append(line)
    else:
        lines.append("no trial completed: nothing to recommend")
    summary = {"best": best, "base": scored, "counts": counts, "knobs": knobs}
    write_json(out / "summary.json", json.loads(json.dumps(summary, default=str)), indent=2)
    text = table.drop(columns=["checkpoint", "error"]).to_string(index=False, float_format=lambda v: f"{v:.4g}")
    return {"table": table, "text": text, "lines": lines, "best": best}
