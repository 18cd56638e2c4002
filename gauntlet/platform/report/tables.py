"""The report's tables: success rates with Wilson intervals, policies side by side, nominal versus
recovery success (the recovery gap), classifier agreement and accuracy, and how well error types are
told apart."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

from gauntlet.envs.injectors import NOMINAL
from gauntlet.envs.scene_db import HARVESTED
from gauntlet.platform.eval.results import LABEL_COLUMNS
from gauntlet.platform.report.load import run_fields
from gauntlet.platform.report.stats import (
    cohen_kappa,
    fleiss_kappa_from_labels,
    kappa_strength,
    kruskal_wallis,
    rate_difference_interval,
    wilson_interval,
)

if TYPE_CHECKING:
    import pandas as pd

COUNT_COLUMNS = ["episodes", "skipped", "n", "successes", "rate", "ci_low", "ci_high"]  # of every success table
ALL = "all"  # the pooled row in the side-by-side table
_SIDES = ("nominal", "recovery")
GAP_COLUMNS = ["policy", "task", *(f"{side}_{c}" for side in _SIDES for c in ("n", "successes", "rate", "ci_low",
                                                                            "ci_high")),
               "gap", "gap_ci_low", "gap_ci_high"]


def is_nominal(frame: pd.DataFrame) -> pd.Series:
    """Rows of nominal scenes (the task's start state, nothing injected): the recovery gap's baseline."""
    return frame["error_type"] == NOMINAL


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
    return pd.DataFrame(rows, columns=[*by, *COUNT_COLUMNS])


def policy_order(frame: pd.DataFrame, run_config: dict[str, Any]) -> list[str]:
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


def recovery_gap_table(frame: pd.DataFrame, policies: list[str], confidence: float = 0.95) -> pd.DataFrame:
    """Per policy and task (plus its pooled `all` row): success on nominal scenes next to success on
    error-recovery scenes, each with its Wilson CI, and the gap nominal - recovery with Newcombe's
    interval built from those two. Skipped episodes are left out, as in every rate.

    A large gap says the policy can do the task but not recover; a small one with low rates says it
    cannot do the task at all. Empty (columns only) when the run has no nominal episode.
    """
    import pandas as pd

    ran = frame[~frame["skipped"]]
    nominal = is_nominal(ran)
    if not nominal.any():
        return pd.DataFrame(columns=GAP_COLUMNS)
    rows = []
    for policy in policies:
        part = ran[ran["policy"] == policy]
        for task in [*sorted(part["task"].unique()), ALL]:
            cell = part if task == ALL else part[part["task"] == task]
            row: dict[str, Any] = {"policy": policy, "task": task}
            counts = {}
            for side, rows_of_side in zip(_SIDES, (cell[is_nominal(cell)], cell[~is_nominal(cell)]), strict=True):
                n, successes = len(rows_of_side), int(rows_of_side["success"].sum())
                low, high = wilson_interval(successes, n, confidence)
                row.update({f"{side}_n": n, f"{side}_successes": successes,
                            f"{side}_rate": successes / n if n else math.nan, f"{side}_ci_low": low,
                            f"{side}_ci_high": high})
                counts[side] = (successes, n)
            row["gap"], row["gap_ci_low"], row["gap_ci_high"] = rate_difference_interval(
                *counts["nominal"], *counts["recovery"], confidence)
            rows.append(row)
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


def recovery_gap_display(gap: pd.DataFrame) -> pd.DataFrame:
    """The gap table for reading: "rate [lo, hi] n=N" per side and "+gap [lo, hi]"."""
    import pandas as pd

    def side(r: Any, name: str) -> str:
        n = int(r[f"{name}_n"])
        return _format_rate(r[f"{name}_rate"], r[f"{name}_ci_low"], r[f"{name}_ci_high"], n) if n else "n/a"

    rows = [{"policy": r["policy"], "task": r["task"], "nominal": side(r, "nominal"), "recovery": side(r, "recovery"),
             "gap (nominal - recovery)": "n/a" if math.isnan(r["gap"]) else
             f"{r['gap']:+.2f} [{r['gap_ci_low']:+.2f}, {r['gap_ci_high']:+.2f}]"}
            for _, r in gap.iterrows()]
    return pd.DataFrame(rows, columns=["policy", "task", "nominal", "recovery", "gap (nominal - recovery)"])


def classifier_tables(frame: pd.DataFrame, confidence: float = 0.95) -> dict[str, pd.DataFrame]:
    """Agreement among the error classifiers (every scene) and their accuracy vs the injected error type.

    Labels belong to the scene, not the episode, so each scene counts once (its first row), however
    many policies and trials ran it; skipped scenes count too, since they were still labelled. A
    harvested scene's error type is the classifiers' own majority label, so it has no true type to
    score accuracy against; how far the classifiers agree on it still counts.
    """
    import pandas as pd

    scenes = frame.drop_duplicates(subset=["scene_id"], keep="first")
    names = list(LABEL_COLUMNS)
    if "origin" in scenes.columns:
        scenes_with_truth = scenes[scenes["origin"] != HARVESTED]
    else:
        scenes_with_truth = scenes
    labels = _scene_labels(scenes_with_truth)
    by_type_rows = []
    scene_types = scenes_with_truth[["error_type", "category"]].reset_index(drop=True)
    for (error_type, category), group in scene_types.groupby(["error_type", "category"], sort=True):
        row: dict[str, Any] = {"error_type": error_type, "category": category, "n_scenes": len(group)}
        for name in names:
            judged = [labels[name][i] for i in group.index if labels[name][i] is not None]
            row[f"accuracy_{name}"] = (sum(v == error_type for v in judged) / len(judged)) if judged else math.nan
        by_type_rows.append(row)

    return {
        "classifier_agreement": pd.DataFrame(_agreement_rows(_scene_labels(scenes))),
        "classifier_accuracy": pd.DataFrame(_accuracy_rows(labels, scenes_with_truth["error_type"].tolist(),
                                                           confidence)),
        "classifier_accuracy_by_error_type": pd.DataFrame(
            by_type_rows, columns=["error_type", "category", "n_scenes", *(f"accuracy_{n}" for n in names)]
        ),
    }


def _scene_labels(scenes: pd.DataFrame) -> dict[str, list[str | None]]:
    """Classifier name -> its label of each scene, in row order (None where it gave none)."""
    return {
        name: [None if (v is None or (isinstance(v, float) and math.isnan(v)) or v == "") else str(v)
               for v in scenes[column].tolist()]
        for name, column in LABEL_COLUMNS.items()
    }


def _agreement_rows(labels: dict[str, list[str | None]]) -> list[dict[str, Any]]:
    """Fleiss' kappa over all classifiers (scenes every one labelled), Cohen's kappa per pair."""
    names = list(labels)
    matrix = [list(row) for row in zip(*(labels[n] for n in names), strict=True)]
    complete = [row for row in matrix if all(v is not None for v in row)]
    fleiss = fleiss_kappa_from_labels(complete)
    rows = [{
        "measure": "fleiss_kappa", "raters": ", ".join(names), "n_scenes": len(complete),
        "percent_agreement": (sum(len(set(r)) == 1 for r in complete) / len(complete)) if complete else math.nan,
        "kappa": fleiss, "strength": kappa_strength(fleiss),
    }]
    for a, b in itertools.combinations(names, 2):
        pairs = [(x, y) for x, y in zip(labels[a], labels[b], strict=True) if x is not None and y is not None]
        kappa = cohen_kappa([x for x, _ in pairs], [y for _, y in pairs])
        rows.append({
            "measure": "cohen_kappa", "raters": f"{a}, {b}", "n_scenes": len(pairs),
            "percent_agreement": (sum(x == y for x, y in pairs) / len(pairs)) if pairs else math.nan,
            "kappa": kappa, "strength": kappa_strength(kappa),
        })
    return rows


def _accuracy_rows(labels: dict[str, list[str | None]], truth: list[str], confidence: float) -> list[dict[str, Any]]:
    """Per classifier: how often its label (where it gave one) is the injected error type, Wilson CI."""
    rows = []
    for name, given in labels.items():
        judged = [(label, t) for label, t in zip(given, truth, strict=True) if label is not None]
        correct = sum(label == t for label, t in judged)
        low, high = wilson_interval(correct, len(judged), confidence)
        rows.append({
            "classifier": name, "n_scenes": len(judged), "correct": correct,
            "accuracy": correct / len(judged) if judged else math.nan, "ci_low": low, "ci_high": high,
            "said_none": sum(label == NOMINAL for label, _ in judged),
        })
    return rows


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
