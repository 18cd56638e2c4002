"""`gauntlet report compare`: the paired statistics against independent references, the pairing on two
hand-made runs written through the real results store, and two real evals (scripted vs random on lift
scenes, one run with an extra scene) compared end to end."""

from __future__ import annotations

import math
from math import comb
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from scipy.stats import binomtest

from gauntlet.envs.scene_db import HARVESTED, INJECTED, NOMINAL_ORIGIN
from gauntlet.platform.cli import main as cli
from gauntlet.platform.eval.episode import WorkItem
from gauntlet.platform.eval.results import COMPACTED_FILE, ResultsStore, new_row, skipped_row
from gauntlet.platform.report.compare import COMPARE_COLUMNS, COVERAGE_COLUMNS, PAIR_KEY
from gauntlet.platform.report.stats import mcnemar_exact, paired_difference_interval, rate_difference_interval


# ----------------------------------------------------------------------------------------- statistics
def _exact_two_sided(small: int, n: int) -> float:
    """McNemar's exact p by hand: twice the binomial(n, 1/2) tail up to the smaller discordant count."""
    return min(1.0, 2 * sum(comb(n, k) for k in range(small + 1)) / 2**n)


def test_mcnemar_exact_matches_textbook_tables():
    # Armitage & Berry's two culture media (12 vs 2 discordant specimens): two-sided exact p = 0.0129.
    assert mcnemar_exact(12, 2) == pytest.approx(212 / 2**14) and round(mcnemar_exact(2, 12), 4) == 0.0129
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)  # Bentur et al.'s airway table: p = 0.070
    for a_only, b_only in ((0, 5), (3, 3), (9, 4), (0, 1)):
        assert mcnemar_exact(a_only, b_only) == pytest.approx(_exact_two_sided(min(a_only, b_only), a_only + b_only))
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair: nothing contradicts "no difference"
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 3)


def _newcombe_paired_reference(a_only: int, b_only: int, both: int, neither: int) -> tuple[float, float]:
    """Newcombe's method 10, written out from the paper with SciPy's own Wilson limits."""
    n = a_only + b_only + both + neither
    x1, x2 = both + a_only, both + b_only
    l1, u1 = binomtest(x1, n).proportion_ci(0.95, method="wilson")
    l2, u2 = binomtest(x2, n).proportion_ci(0.95, method="wilson")
    p1, p2 = x1 / n, x2 / n
    phi = (both * neither - a_only * b_only) / math.sqrt(x1 * (n - x1) * x2 * (n - x2))
    return (p1 - p2 - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2),
            p1 - p2 + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))


def test_paired_interval_matches_an_independent_computation_and_the_unpaired_case():
    # Armitage & Berry's media: 20 both, 12 A only, 2 B only, 16 neither; difference 0.2.
    diff, low, high = paired_difference_interval(12, 2, 20, 16)
    assert diff == pytest.approx(0.2) and (round(low, 4), round(high, 4)) == (0.0618, 0.3242)
    for counts in ((12, 2, 20, 16), (1, 7, 1, 12), (5, 0, 3, 2), (3, 4, 10, 10)):
        assert paired_difference_interval(*counts)[1:] == pytest.approx(_newcombe_paired_reference(*counts))
    # Uncorrelated pairs (both x neither = a_only x b_only, phi = 0) give the independent-samples interval.
    assert paired_difference_interval(2, 4, 1, 8) == pytest.approx(rate_difference_interval(3, 15, 5, 15))
    # Positively correlated outcomes narrow it: the point of pairing.
    paired_low, paired_high = paired_difference_interval(12, 2, 20, 16)[1:]
    unpaired = rate_difference_interval(32, 50, 22, 50)
    assert paired_high - paired_low < unpaired[2] - unpaired[1]
    assert paired_difference_interval(0, 0, 7, 0) == pytest.approx((0.0, -0.0, 0.0), abs=0.5)  # inside [-1, 1]
    assert all(math.isnan(v) for v in paired_difference_interval(0, 0, 0, 0))


# ------------------------------------------------------------------------------------ hand-made runs
def _row(*, policy: str, scene_id: str = "lift-drop-0", trial: int = 0, error_type: str = "drop",
         origin: str = INJECTED, skip_reason: str = "", **outcome: Any) -> dict[str, Any]:
    """A result row from the real row builder: the scene's columns, then the outcome."""
    item = WorkItem("r", scene_id, policy, trial, 200)
    scene = {"task": "lift", "variant": "D0", "error_type": error_type, "category": "natural", "origin": origin,
             "seed": 7}
    if skip_reason:
        return skipped_row(item, scene, skip_reason, "w0", "0.1.0")
    return new_row(item, scene, "w0", "0.1.0", **outcome)


# (scene, error_type, origin, [(success A, success B) per trial])
SCENES = [("lift-drop-0", "drop", INJECTED, [(1, 0), (1, 0), (1, 1)]),
          ("lift-drop-1", "drop", INJECTED, [(1, 0), (0, 0), (0, 1)]),
          ("lift-none-0", "none", NOMINAL_ORIGIN, [(1, 1), (1, 1), (1, 0)]),
          ("lift-drop-h0", "drop", HARVESTED, [(0, 1), (0, 1), (0, 0)])]


def _write_runs(root: Path, labels: tuple[str, str] = ("base", "tuned")) -> tuple[Path, Path]:
    """Run A: every scene and trial, plus a skipped fourth trial. Run B: the same episodes (trial 1 of
    lift-drop-1 skipped) plus a scene A never ran."""
    rows: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    for scene_id, error_type, origin, outcomes in SCENES:
        for trial, (win_a, win_b) in enumerate(outcomes):
            common = dict(scene_id=scene_id, error_type=error_type, origin=origin, trial=trial)
            rows["a"].append(_row(policy=labels[0], success=bool(win_a), **common))
            if scene_id == "lift-drop-1" and trial == 1:
                rows["b"].append(_row(policy=labels[1], skip_reason="TimeoutError: slow", **common))
            else:
                rows["b"].append(_row(policy=labels[1], success=bool(win_b), **common))
    rows["a"].append(_row(policy=labels[0], trial=3, skip_reason="fingerprint mismatch"))
    rows["b"] += [_row(policy=labels[1], scene_id="lift-push-9", error_type="object_push", trial=t, success=True)
                  for t in range(2)]
    runs = []
    for side in "ab":
        run = root / f"run-{side}"
        ResultsStore(run).write(rows[side])
        runs.append(run)
    return runs[0], runs[1]


def _overall(compare: pd.DataFrame, origin: str = "all") -> pd.Series:
    hit = compare[(compare["task"] == "all") & (compare["error_type"] == "all") & (compare["origin"] == origin)]
    assert len(hit) == 1, origin
    return hit.iloc[0]


def test_pairs_counts_and_statistics_on_hand_made_runs(tmp_path: Path, capsys):
    run_a, run_b = _write_runs(tmp_path)
    out = tmp_path / "cmp"
    assert cli(["report", "compare", str(run_a), str(run_b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    compare = pd.read_csv(out / "compare.csv", keep_default_na=False, na_values=[""])
    assert list(compare.columns) == COMPARE_COLUMNS
    # 12 episodes in both runs, one of them skipped in B: 11 pairs.
    overall = _overall(compare)
    assert (overall["policy_a"], overall["policy_b"], overall["pairs"]) == ("base", "tuned", 11)
    assert (overall["both"], overall["a_only"], overall["b_only"], overall["neither"]) == (3, 4, 3, 1)
    assert overall["mcnemar_p"] == pytest.approx(_exact_two_sided(3, 7))
    assert (overall["diff"], overall["diff_ci_low"], overall["diff_ci_high"]) == pytest.approx(
        paired_difference_interval(4, 3, 3, 1))
    harvested = _overall(compare, HARVESTED)
    assert (harvested["pairs"], harvested["a_only"], harvested["b_only"], harvested["rate_b"]) == (3, 0, 2, 2 / 3)
    cell = compare[(compare["task"] == "lift") & (compare["error_type"] == "drop") & (compare["origin"] == INJECTED)]
    assert cell[["pairs", "both", "a_only", "b_only", "neither"]].values.tolist() == [[5, 1, 3, 1, 0]]

    coverage = pd.read_csv(out / "coverage.csv")
    assert list(coverage.columns) == COVERAGE_COLUMNS
    assert coverage.iloc[0][["rows_a", "skipped_a", "left_out_a", "rows_b", "skipped_b", "left_out_b"]].tolist() == [
        13, 1, 1, 14, 1, 2]  # A's trial 1 of lift-drop-1 lost its partner; B's extra scene has none in A
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 11 and set(PAIR_KEY) <= set(pairs.columns)
    page = (out / "compare.html").read_text()
    assert "Paired comparison" in page and "mcnemar_p" in page and "<script" not in page
    assert "left out" in printed and "base vs tuned" in printed


def test_policy_choice_per_label_and_ambiguity_names_the_flag(tmp_path: Path, capsys):
    run_a, run_b = _write_runs(tmp_path / "one")
    more_a, _ = _write_runs(tmp_path / "two", labels=("other", "tuned"))
    both = tmp_path / "both"
    ResultsStore(both).write(ResultsStore(run_a).read().to_dict("records")
                             + ResultsStore(more_a).read().to_dict("records"))
    # RUN_A holds two labels and RUN_B one: which of A's is meant must be said.
    assert cli(["report", "compare", str(both), str(run_b), "--out", str(tmp_path / "x")]) == 2
    assert "--policy-a" in capsys.readouterr().err
    assert cli(["report", "compare", str(both), str(run_b), "--policy-a", "nope"]) == 2
    assert "--policy-a 'nope' is not a policy" in capsys.readouterr().err
    out = tmp_path / "chosen"
    assert cli(["report", "compare", str(both), str(run_b), "--policy-a", "other", "--out", str(out)]) == 0
    assert _overall(pd.read_csv(out / "compare.csv"))["policy_a"] == "other"
    # The same labels in both runs: compared label by label.
    out = tmp_path / "same"
    assert cli(["report", "compare", str(both), str(both), "--out", str(out)]) == 0
    coverage = pd.read_csv(out / "coverage.csv")
    assert coverage[["policy_a", "policy_b", "pairs"]].values.tolist() == [["base", "base", 12], ["other", "other", 12]]
    capsys.readouterr()
    assert cli(["report", "compare", str(tmp_path / "missing"), str(run_b)]) == 2  # bad input, as every other
    assert str(tmp_path / "missing") in capsys.readouterr().err


def test_the_tables_are_written_whole_or_not_at_all(tmp_path: Path):
    """A write that fails part-way (here a value that cannot be formatted) leaves the previous CSV as it was."""
    from gauntlet.platform.report.compare import CompareConfig, build_comparison, write_comparison

    run_a, run_b = _write_runs(tmp_path)
    out = tmp_path / "cmp"
    result = build_comparison(CompareConfig(run_a=str(run_a), run_b=str(run_b)))
    write_comparison(result, out)
    before = (out / "pairs.csv").read_bytes()

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("disk full")

    pairs = result["tables"]["pairs"].astype({"scene_id": object})
    pairs.loc[len(pairs) - 1, "scene_id"] = Unprintable()
    with pytest.raises(RuntimeError, match="disk full"):
        write_comparison({**result, "tables": {**result["tables"], "pairs": pairs}}, out)
    assert (out / "pairs.csv").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.html", "coverage.csv", "pairs.csv"]


def test_runs_with_no_common_episode_are_an_error_with_the_counts(tmp_path: Path, capsys):
    run_a, _ = _write_runs(tmp_path / "one")
    other = tmp_path / "other"
    ResultsStore(other).write([_row(policy="x", scene_id="elsewhere", success=True)])
    assert cli(["report", "compare", str(run_a), str(other), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no episode" in err and "0 pairs" in err and "12 of 13 rows of A" in err


# ------------------------------------------------------------------------------------- two real evals
@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory, ray_session) -> tuple[Path, Path]:
    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval
    from gauntlet.runtime.config_args import parse_config

    root = tmp_path_factory.mktemp("compare")
    db = root / "scenes"
    assert cli(["scenes", "generate", "--out", str(db), "--tasks", "lift", "--variants", "D0", "--nominal",
                "--error-types", "drop,object_push", "--workers", "2", "--no-validate"]) == 0
    runs = []
    for policy, extra in (("scripted", ["--error-types", "drop,object_push"]), ("random", [])):
        run = root / policy
        argv = ["--scenes", str(db), "--policy", policy, "--out", str(run), "--trials", "2", "--actors", "2",
                "--horizon", "120", *extra]
        run_eval(parse_config(EvalConfig, argv, "gauntlet eval", ""))
        runs.append(run)
    return runs[0], runs[1]


def test_two_real_evals_compared_on_their_intersection(real_runs, tmp_path: Path, capsys):
    run_a, run_b = real_runs  # scripted on the 2 injected scenes; random on those and the nominal one
    assert cli(["report", "compare", str(run_a), str(run_b), "--report-to", "tensorboard"]) == 0
    out = run_a / "report" / f"compare-{run_b.name}"
    a, b = (pd.read_parquet(r / COMPACTED_FILE) for r in (run_a, run_b))
    assert len(a) == 4 and len(b) == 6 and not a["skipped"].any() and not b["skipped"].any()
    assert set(b["origin"]) == {INJECTED, NOMINAL_ORIGIN} and set(a["origin"]) == {INJECTED}
    merged = a.merge(b, on=["scene_id", "trial"], suffixes=("_a", "_b"))
    expected = {"pairs": len(merged), "a_only": int((merged["success_a"] & ~merged["success_b"]).sum()),
                "b_only": int((~merged["success_a"] & merged["success_b"]).sum())}
    overall = _overall(pd.read_csv(out / "compare.csv"))
    assert {k: int(overall[k]) for k in expected} == expected and expected["pairs"] == 4
    assert (overall["policy_a"], overall["policy_b"]) == ("scripted", "random")
    assert overall["mcnemar_p"] == pytest.approx(_exact_two_sided(min(expected["a_only"], expected["b_only"]),
                                                                  expected["a_only"] + expected["b_only"]))
    coverage = pd.read_csv(out / "coverage.csv").iloc[0]
    assert (coverage["left_out_a"], coverage["left_out_b"], coverage["rows_b"]) == (0, 2, 6)  # B's nominal scene
    assert (out / "compare.html").is_file() and len(pd.read_csv(out / "pairs.csv")) == 4

    from gauntlet.runtime.tracking import read_tensorboard

    logged = read_tensorboard(out / "tensorboard")
    assert logged["scalars"]["compare/scripted_vs_random/pairs"] == [(0, 4.0)]
    assert "compare/compare" in logged["texts"] and "compare/coverage" in logged["texts"]
