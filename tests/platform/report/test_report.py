"""`gauntlet report` on a hand-made run written through the real results store, with known answers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from scipy import stats as sps

from gauntlet.platform.eval.results import RESULT_COLUMNS, ResultsStore
from gauntlet.platform.report import build as report
from gauntlet.platform.report.stats import cohen_kappa, fleiss_kappa_from_labels

# (task, error_type, category, scenes); every scene runs 2 trials per policy
CELLS = [("lift", "drop", "natural", 5), ("lift", "object_push", "impulse", 5),
         ("stack", "target_shift", "pose_perturb", 5), ("stack", "gripper_stall", "augmented", 2)]
# oracle successes per (task, error_type) out of its 10 episodes; random never succeeds
ORACLE_SUCCESSES = {("lift", "drop"): 8, ("lift", "object_push"): 3, ("stack", "target_shift"): 10}


def _row(**values: Any) -> dict[str, Any]:
    row = {
        "run_id": "r1", "scene_id": "s", "policy": "oracle", "trial": 0, "task": "lift", "variant": "D0",
        "error_type": "drop", "category": "natural", "success": False, "skipped": False, "skip_reason": "", "skip_kind": "",
        "steps": 100, "recovery_step": -1, "inference_calls": 10, "episode_restarts": 0, "replan_steps": 10, "latency_ms_mean": 5.0, "latency_ms_p50": 4.0,
        "latency_ms_max": 9.0, "label_motion": "none", "label_grasp": "none", "label_command": "none",
        "origin": "injected", "scene_seed": 0, "policy_seed": 0, "horizon": 200, "wall_s": 1.0, "worker": "w0", "code_version": "0.1.0",
        "first_action": "",
    }
    row.update(values)
    assert set(row) == set(RESULT_COLUMNS)
    return row


def _scene_labels(error_type: str, index: int) -> dict[str, str]:
    # motion always right, grasp right on the first 3 scenes of a type, command always says "none"
    return {"label_motion": error_type, "label_grasp": error_type if index < 3 else "none", "label_command": "none"}


def make_run(run: Path) -> None:
    """17 scenes; oracle 8/10 on lift/drop plus 2 extra skipped episodes; gripper_stall all skipped."""
    run.mkdir(parents=True)
    identity = {"scenes": "/db", "policy": ["random", "oracle"], "trials": 2, "horizon": 200, "run_id": "r1"}
    (run / "run.json").write_text(json.dumps(  # the layout `gauntlet eval` writes
        {"identity": identity, "config": {**identity, "actors": 2, "out": str(run)}, "config_hash": "abc123"}))
    store = ResultsStore(run)
    for policy in ("oracle", "random"):  # one part file per policy: the report must read both
        rows = []
        for task, error_type, category, n_scenes in CELLS:
            wins = ORACLE_SUCCESSES.get((task, error_type), 0) if policy == "oracle" else 0
            for i in range(n_scenes):
                scene = dict(scene_id=f"{task}-{error_type}-{i}", task=task, error_type=error_type,
                             category=category, **_scene_labels(error_type, i))
                for trial in range(2):
                    k = 2 * i + trial
                    if error_type == "gripper_stall":
                        rows.append(_row(policy=policy, trial=trial, skipped=True,
                                         skip_reason="fingerprint mismatch", **scene))
                    else:
                        rows.append(_row(policy=policy, trial=trial, success=k < wins, **scene))
            if policy == "oracle" and error_type == "drop":
                for i in range(2):  # skipped third trials: counted, never in the rate
                    rows.append(_row(policy=policy, trial=2, skipped=True, skip_reason="actor died",
                                     scene_id=f"lift-drop-{i}", **_scene_labels("drop", i)))
        store.write(rows)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    make_run(run)
    return run


@pytest.fixture(scope="module")
def built(run_dir) -> dict[str, Any]:
    return report.build_report(run_dir)


@pytest.fixture(scope="module")
def written(run_dir) -> dict[str, Path]:
    return report.write_report(run_dir, html=True)


def _one(frame: pd.DataFrame, **where: Any) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for column, value in where.items():
        mask &= frame[column] == value
    assert mask.sum() == 1, where
    return frame[mask].iloc[0]


def test_cell_rates_cis_and_skipped(built):
    cells = built["tables"]["cells"]
    assert len(cells) == 2 * len(CELLS)
    drop = _one(cells, policy="oracle", task="lift", error_type="drop")
    assert (drop["category"], drop["episodes"], drop["skipped"], drop["n"], drop["successes"]) == (
        "natural", 12, 2, 10, 8)
    assert drop["rate"] == pytest.approx(0.8)  # 8/10, not 8/12: skipped episodes leave the rate
    assert (round(drop["ci_low"], 3), round(drop["ci_high"], 3)) == (0.490, 0.943)
    push = _one(cells, policy="oracle", error_type="object_push")
    assert push["rate"] == pytest.approx(0.3) and push["skipped"] == 0
    never = _one(cells, policy="random", error_type="target_shift")
    assert never["rate"] == 0.0 and never["ci_low"] == 0.0 and 0.2 < never["ci_high"] < 0.35
    stalled = _one(cells, policy="oracle", error_type="gripper_stall")
    assert (stalled["episodes"], stalled["skipped"], stalled["n"]) == (4, 4, 0)
    assert math.isnan(stalled["rate"]) and math.isnan(stalled["ci_low"])

    overall = _one(built["tables"]["by_policy"], policy="oracle")
    assert (overall["episodes"], overall["skipped"], overall["n"], overall["successes"]) == (36, 6, 30, 21)
    assert built["n_rows"] == 70 and built["n_skipped"] == 10
    assert any("10 of 70 episodes were skipped" in n for n in built["notes"])
    # Rows written without skip_kind get it from their reason: "actor died" is transient, a
    # fingerprint mismatch permanent.
    assert built["n_skipped_transient"] == 2
    assert any("2 transient" in n and "8 permanent" in n for n in built["notes"])


def test_policies_side_by_side(built):
    comparison = built["tables"]["comparison"]
    assert list(comparison.columns) == ["task", "error_type", "random", "oracle"]  # run.json's order
    assert _one(comparison, task="lift", error_type="drop")["oracle"] == "0.80 [0.49, 0.94] n=10"
    assert _one(comparison, task="lift", error_type="drop")["random"].startswith("0.00 [0.00, 0.28] n=10")
    assert _one(comparison, task="lift", error_type="all")["oracle"].startswith("0.55 ")  # 11/20 pooled
    assert _one(comparison, task="stack", error_type="gripper_stall")["oracle"] == "n/a (all skipped)"
    assert _one(comparison, task="all", error_type="all")["oracle"].endswith("n=30")


def test_classifier_agreement_and_accuracy(built):
    scenes = [(et, i) for _, et, _, n in CELLS for i in range(n)]
    labels = [list(_scene_labels(et, i).values()) for et, i in scenes]
    agreement = built["tables"]["classifier_agreement"]
    fleiss = _one(agreement, measure="fleiss_kappa")
    assert fleiss["n_scenes"] == 17 and fleiss["kappa"] == pytest.approx(fleiss_kappa_from_labels(labels))
    motion_grasp = _one(agreement, raters="motion, grasp")
    assert motion_grasp["kappa"] == pytest.approx(cohen_kappa([r[0] for r in labels], [r[1] for r in labels]))
    assert motion_grasp["percent_agreement"] == pytest.approx(11 / 17)
    assert len(agreement) == 4  # Fleiss + 3 pairs

    accuracy = built["tables"]["classifier_accuracy"].set_index("classifier")
    assert accuracy.loc["motion", "accuracy"] == 1.0 and accuracy.loc["motion", "n_scenes"] == 17
    assert accuracy.loc["grasp", "correct"] == 11 and accuracy.loc["grasp", "said_none"] == 6
    assert accuracy.loc["command", "accuracy"] == 0.0
    by_type = built["tables"]["classifier_accuracy_by_error_type"].set_index("error_type")
    assert by_type.loc["drop", "accuracy_grasp"] == pytest.approx(3 / 5)
    assert by_type.loc["gripper_stall", "accuracy_grasp"] == 1.0 and by_type.loc["drop", "n_scenes"] == 5


def test_separability_matches_scipy_and_guards_degenerate(built):
    sep = built["tables"]["separability"].set_index("policy")
    groups = [[1.0] * 8 + [0.0] * 2, [1.0] * 3 + [0.0] * 7, [1.0] * 10]  # drop, object_push, target_shift
    expected = sps.kruskal(*groups)
    oracle = sep.loc["oracle"]
    assert oracle["statistic"] == pytest.approx(expected.statistic)
    assert oracle["p_value"] == pytest.approx(expected.pvalue)
    assert oracle["df"] == 2 and oracle["n_episodes"] == 30 and oracle["note"] == ""  # all-skipped type left out
    random = sep.loc["random"]  # every episode failed: scipy would raise
    assert math.isnan(random["statistic"]) and random["p_value"] == 1.0 and "identical" in random["note"]


def test_written_files_html_and_csvs(run_dir, written, built):
    out = run_dir / "report"
    for name, frame in built["tables"].items():
        path = written[name]
        assert path == out / f"{name}.csv"
        back = pd.read_csv(path, keep_default_na=False, na_values=[""])
        assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    cells = pd.read_csv(out / "cells.csv")
    drop = _one(cells, policy="oracle", error_type="drop")
    assert drop["skipped"] == 2 and drop["rate"] == pytest.approx(0.8)
    for stem in ("success_by_error_type", "success_by_task", "success_by_task_error_type"):
        assert written[stem].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = written["html"].read_text()
    assert written["html"] == out / "report.html"
    assert page.count("data:image/png;base64,") == 3
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page
    assert "0.80 [0.49, 0.94] n=10" in page and "fleiss_kappa" in page and "Kruskal" in page
    assert "Evaluation report: r1" in page and "run.json: config_hash" in page and "abc123" in page


def test_main_prints_summary_and_writes_html(run_dir, capsys):
    from gauntlet.platform.cli import main as cli_main

    html = run_dir / "report" / "report.html"
    html.unlink(missing_ok=True)
    assert cli_main(["report", str(run_dir), "--html"]) == 0
    stdout = capsys.readouterr().out
    assert "success rate per policy" in stdout and "oracle" in stdout and "0.80 [0.49, 0.94] n=10" in stdout
    assert "fleiss_kappa" in stdout and html.is_file()


def test_main_bad_inputs_exit_1_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert report.main([str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not missing.exists()  # reporting never creates the run directory

    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 1
    err = capsys.readouterr().err
    assert "no results" in err and str(empty) in err

    broken = tmp_path / "broken"
    (broken / "results").mkdir(parents=True)
    bad = broken / "results" / "part-000001.parquet"
    bad.write_bytes(b"this is not parquet")
    assert report.main([str(broken), "--html"]) == 1
    err = capsys.readouterr().err
    assert "cannot read" in err and str(bad) in err
    assert not (broken / "report").exists()


def test_confidence_flag_is_checked():
    with pytest.raises(SystemExit):
        report.main(["somewhere", "--confidence", "1.5"])


def test_compacted_run_reads_the_same(run_dir, built, tmp_path):
    import shutil

    copy = tmp_path / "compacted"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("report"))
    ResultsStore(copy).compact()
    assert (copy / "results.parquet").is_file() and not list((copy / "results").glob("part-*"))
    again = report.build_report(copy)
    pd.testing.assert_frame_equal(again["tables"]["cells"], built["tables"]["cells"])


def test_degenerate_labels_and_single_error_type_do_not_raise(tmp_path, recwarn):
    run = tmp_path / "tiny"
    ResultsStore(run).write([_row(scene_id=f"s{i}", trial=0, success=i % 2 == 0) for i in range(4)])
    built = report.build_report(run)  # no run.json, one error type, every classifier says "none"
    fleiss = _one(built["tables"]["classifier_agreement"], measure="fleiss_kappa")
    assert math.isnan(fleiss["kappa"]) and fleiss["strength"] == "n/a" and fleiss["percent_agreement"] == 1.0
    sep = _one(built["tables"]["separability"], policy="oracle")
    assert math.isnan(sep["p_value"]) and "at least 2" in sep["note"]
    assert any("run.json" in n for n in built["notes"]) and any("undefined" in n for n in built["notes"])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_harvested_scenes_count_in_agreement_but_not_in_accuracy() -> None:
    """A harvested scene's error type is the classifiers' majority, so it has no truth to score accuracy
    against; how far the classifiers agree on it is still measured."""
    from gauntlet.envs.scene_db import HARVESTED, INJECTED
    from gauntlet.platform.report.tables import LABEL_COLUMNS, classifier_tables

    def scene(scene_id: str, origin: str, error_type: str, labels: tuple[str, str, str]) -> dict[str, Any]:
        return {"scene_id": scene_id, "origin": origin, "error_type": error_type, "category": "natural",
                **dict(zip(LABEL_COLUMNS.values(), labels, strict=True))}

    frame = pd.DataFrame([scene("i0", INJECTED, "drop", ("drop", "drop", "drop")),
                          scene("i1", INJECTED, "drop", ("drop", "grasp_slip", "drop")),
                          scene("h0", HARVESTED, "drop", ("drop", "drop", "drop")),
                          scene("h1", HARVESTED, "drop", ("drop", "drop", "none")),
                          scene("h2", HARVESTED, "object_push", ("object_push", "object_push", "drop"))])
    tables = classifier_tables(frame)
    agreement = tables["classifier_agreement"].set_index("measure")
    assert agreement.loc["fleiss_kappa", "n_scenes"] == 5
    assert agreement.loc["fleiss_kappa", "percent_agreement"] == pytest.approx(2 / 5)
    assert (tables["classifier_accuracy"]["n_scenes"] == 2).all()
    assert tables["classifier_accuracy_by_error_type"]["n_scenes"].tolist() == [2]
