"""The recovery gap: nominal vs recovery success per policy and task, on a hand-made run with known
answers and on a real run (nominal + recovery scenes -> `gauntlet eval --report-to tensorboard` ->
`gauntlet report`), where the scripted oracle must solve every nominal scene."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from gauntlet.platform.eval.results import RESULT_COLUMNS, ResultsStore
from gauntlet.platform.report import build as report
from gauntlet.platform.report.stats import rate_difference_interval, wilson_interval


def _row(**values: Any) -> dict[str, Any]:
    row = {
        "run_id": "r1", "scene_id": "s", "policy": "oracle", "trial": 0, "task": "lift", "variant": "D0",
        "error_type": "drop", "category": "natural", "success": False, "skipped": False, "skip_reason": "", "skip_kind": "",
        "steps": 100, "recovery_step": -1, "inference_calls": 10, "episode_restarts": 0, "replan_steps": 10, "latency_ms_mean": 5.0,
        "latency_ms_p50": 4.0, "latency_ms_max": 9.0, "label_motion": "drop", "label_grasp": "drop",
        "label_command": "none", "origin": "", "scene_seed": 0, "policy_seed": 0, "horizon": 200, "wall_s": 1.0, "worker": "w0",
        "code_version": "0.1.0", "first_action": "",
    }
    row.update(values)
    assert set(row) == set(RESULT_COLUMNS)
    return row


# (task, error_type, category, episodes, oracle successes)
CELLS = [("lift", "none", "nominal", 10, 10), ("lift", "drop", "natural", 10, 6),
         ("stack", "none", "nominal", 5, 4), ("stack", "drop", "natural", 8, 2)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Any]:
    run = tmp_path_factory.mktemp("gap") / "run"
    rows = []
    for task, error_type, category, n, wins in CELLS:
        labels = {"label_motion": "none", "label_grasp": "none"} if error_type == "none" else {}
        for i in range(n):
            rows.append(_row(scene_id=f"{task}-{error_type}-{i}", task=task, error_type=error_type,
                             category=category, success=i < wins, **labels))
        # a skipped nominal episode: counted nowhere in the rates
        rows.append(_row(scene_id=f"{task}-{error_type}-x", task=task, error_type=error_type, category=category,
                         skipped=True, skip_reason="fingerprint mismatch", **labels))
    ResultsStore(run).write(rows)
    return report.build_report(run)


def test_gap_per_task_and_pooled_with_newcombe_intervals(built):
    gap = built["tables"]["recovery_gap"].set_index(["policy", "task"])
    lift = gap.loc[("oracle", "lift")]
    assert (lift["nominal_n"], lift["nominal_successes"], lift["recovery_n"], lift["recovery_successes"]) == (
        10, 10, 10, 6)
    assert (lift["nominal_ci_low"], lift["nominal_ci_high"]) == pytest.approx(wilson_interval(10, 10))
    assert (lift["recovery_ci_low"], lift["recovery_ci_high"]) == pytest.approx(wilson_interval(6, 10))
    assert (lift["gap"], lift["gap_ci_low"], lift["gap_ci_high"]) == pytest.approx(
        rate_difference_interval(10, 10, 6, 10))
    assert lift["gap"] == pytest.approx(0.4) and 0 < lift["gap_ci_low"] < 0.4 < lift["gap_ci_high"] <= 1
    pooled = gap.loc[("oracle", "all")]
    assert (pooled["nominal_n"], pooled["nominal_successes"], pooled["recovery_n"], pooled["recovery_successes"]) == (
        15, 14, 18, 8)
    assert pooled["gap"] == pytest.approx(14 / 15 - 8 / 18)


def test_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, Table II example (56/70 vs 48/80): method 10
    diff, low, high = rate_difference_interval(56, 70, 48, 80)
    assert diff == pytest.approx(0.2) and (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    assert all(math.isnan(v) for v in rate_difference_interval(0, 0, 3, 4))


def test_nominal_scenes_stay_out_of_the_classifier_and_separability_tables(built):
    accuracy = built["tables"]["classifier_accuracy"].set_index("classifier")
    assert accuracy.loc["motion", "n_scenes"] == 18 + 2  # the drop scenes (with their skipped ones) only
    assert list(built["tables"]["classifier_accuracy_by_error_type"]["error_type"]) == ["drop"]
    sep = built["tables"]["separability"].set_index("policy")
    assert sep.loc["oracle", "n_error_types"] == 1  # "none" is not an error type to tell apart


def test_summary_and_html_show_the_gap(built, tmp_path):
    text = report.format_summary(built)
    assert "nominal vs recovery success" in text and "+0.40 [" in text and "1.00 [0.72, 1.00] n=10" in text
    paths = report.write_report_files(built, tmp_path / "report", html=True)
    page = paths["html"].read_text()
    assert "recovery gap" in page and "+0.40 [" in page and (tmp_path / "report" / "recovery_gap.csv").is_file()


def test_runs_without_nominal_scenes_say_how_to_get_them(tmp_path):
    run = tmp_path / "plain"
    ResultsStore(run).write([_row(scene_id=f"s{i}", success=i % 2 == 0) for i in range(4)])
    built = report.build_report(run)
    assert built["tables"]["recovery_gap"].empty
    assert any("--nominal" in n for n in built["notes"])
    assert "nominal vs recovery" not in report.format_summary(built)


# ------------------------------------------------------------------------- a real run, end to end
@pytest.mark.slow
def test_real_run_oracle_solves_nominal_scenes_and_eval_is_tracked(ray_session, tmp_path: Path, capsys) -> None:
    from gauntlet.platform.cli import main as cli
    from gauntlet.runtime.tracking import read_tensorboard

    db, run = tmp_path / "scenes", tmp_path / "run"
    assert cli(["scenes", "generate", "--out", str(db), "--tasks", "lift", "--variants", "D0", "--error-types",
                "none,object_push", "--per-combo", "2", "--workers", "2", "--recovery-horizon", "150"]) == 0
    assert cli(["eval", "--scenes", str(db), "--policy", "scripted", "random", "--out", str(run), "--actors", "1",
                "--horizon", "80", "--report-to", "tensorboard"]) == 0
    built = report.build_report(run)
    gap = built["tables"]["recovery_gap"].set_index(["policy", "task"])
    oracle = gap.loc[("scripted", "lift")]
    assert oracle["nominal_n"] == 2 and oracle["nominal_rate"] == 1.0  # the oracle solves the start states
    assert gap.loc[("random", "lift"), "nominal_rate"] == 0.0
    assert oracle["recovery_n"] == 2 and not math.isnan(oracle["gap"])
    assert "nominal vs recovery success" in report.format_summary(built)

    logged = read_tensorboard(run / "tensorboard")
    done = logged["scalars"]["eval/episodes_done"]
    assert done[-1] == (8, 8.0) and [s for s, _ in done] == sorted(s for s, _ in done)
    for tag in ("eval/success_rate", "eval/episodes_per_min", "eval/episodes_total"):
        assert logged["scalars"][tag][-1][0] == 8, tag
    assert "| scripted |" in logged["texts"]["eval/policies"][0]
    cells = logged["texts"]["eval/success_by_policy_task_error_type"][0]
    assert "| none | nominal |" in cells and "object_push" in cells
    assert '"report_to": "tensorboard"' in logged["texts"]["config"][0]
