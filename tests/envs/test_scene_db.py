"""Scene database: generation, round trip, pre-flight, show, and bad input through the real CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gauntlet.envs.env import EnvConfig, GauntletEnv, make_env
from gauntlet.envs.env_errors import EnvironmentMismatchError
from gauntlet.envs.scene_db import SCENE_COLUMNS, SceneDB, SceneDBError
from gauntlet.platform.cli import main as cli

ERRORS = "drop,object_push,gripper_stall,target_shift,grasp_slip"


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "db"
    rc = cli(["scenes", "generate", "--out", str(out), "--tasks", "lift,stack", "--variants", "D0",
              "--error-types", ERRORS, "--workers", "2", "--recovery-horizon", "200"])
    assert rc == 0
    return out


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_writes_typed_rows_for_every_applicable_combo(db_path: Path) -> None:
    frame = pd.read_parquet(db_path / "scenes.parquet")  # pandas alone reads it
    assert set(SCENE_COLUMNS) <= set(frame.columns)
    # target_shift applies to stack only: 4 lift + 5 stack scenes.
    assert sorted(frame.groupby("task").size().to_dict().items()) == [("lift", 4), ("stack", 5)]
    assert frame["recoverable"].dtype == bool and frame["scene_id"].is_unique
    assert set(frame["category"]) <= {"impulse", "pose_perturb", "augmented", "natural"}
    for _, row in frame.iterrows():
        params = json.loads(row["injection_params"])
        assert params["magnitude"] == pytest.approx(row["magnitude"])
    manifest = json.loads((db_path / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["num_scenes"] == 9
    with np.load(db_path / "arrays" / f"{frame['scene_id'][0]}.npz", allow_pickle=False) as npz:
        assert "state/mj_state" in npz.files and "traj/obj_pos" in npz.files


def test_round_trip_restores_the_exact_captured_state(db_path: Path) -> None:
    db = SceneDB.open(db_path)
    meta = db.metadata()
    envs: dict[str, GauntletEnv] = {}
    for _, row in meta.iterrows():
        env = envs.setdefault(row["env_config"], GauntletEnv(EnvConfig.from_json(row["env_config"])))
        env.reset(12345)
        db.restore(env, row["scene_id"])
        saved = db.load_state(row["scene_id"])
        again = env.get_state()
        assert set(again) == set(saved)
        for key in saved:
            assert np.array_equal(np.asarray(again[key]), np.asarray(saved[key])), key


def test_restored_scene_replays_the_oracle_recovery(db_path: Path) -> None:
    """A recoverable scene, restored in a fresh env, is solved again by the expert in the same steps."""
    from gauntlet.envs.experts import make_expert

    db = SceneDB.open(db_path)
    row = db.metadata().query("recoverable").iloc[0]
    env = make_env(row["task"], row["variant"])
    db.restore(env, row["scene_id"])
    expert = make_expert(env, seed=int(row["seed"]))
    steps = next(t + 1 for t in range(400) if env.step(expert.act()))
    assert steps == row["recovery_steps"]


def test_mismatched_fingerprint_raises_typed_error_with_both_hashes(db_path: Path) -> None:
    db = SceneDB.open(db_path)
    scene = db.metadata().query("task == 'lift'").iloc[0]
    other = GauntletEnv(EnvConfig(task="lift", control_freq=10))
    with pytest.raises(EnvironmentMismatchError) as info:
        db.restore(other, scene["scene_id"])
    assert info.value.expected == scene["fingerprint"]
    assert info.value.actual == other.fingerprint


def test_check_counts_compatible_and_incompatible(db_path: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "db"
    shutil.copytree(db_path, copy)
    frame = pd.read_parquet(copy / "scenes.parquet")
    # Two stack scenes claim a fingerprint the current code does not produce.
    stack_ids = frame.index[frame["task"] == "stack"][:2]
    frame.loc[stack_ids, "fingerprint"] = "0" * 64
    frame.to_parquet(copy / "scenes.parquet")
    assert cli(["scenes", "check", str(copy), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 9 and report["compatible"] == 7 and report["incompatible"] == 2
    assert report["by_task"]["stack"]["incompatible"] == 2
    assert sum(c["total"] for c in report["by_error_type"].values()) == 9
    assert set(report["by_category"]) <= {"impulse", "pose_perturb", "augmented", "natural"}
    fractions = [c["recoverable_fraction"] for c in report["by_error_type"].values()]
    assert all(f is None or 0.0 <= f <= 1.0 for f in fractions)
    assert report["incompatible_reasons"] and "fingerprint mismatch" in next(iter(report["incompatible_reasons"]))


def test_show_prints_metadata(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene_id = SceneDB.open(db_path).metadata()["scene_id"][0]
    assert cli(["scenes", "show", str(db_path), scene_id, "--arrays"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["scene_id"] == scene_id and "magnitude" in shown["injection_params"]
    assert shown["arrays"]["state/mj_state"]


def test_classifiers_label_errors_better_than_chance(db_path: Path) -> None:
    frame = SceneDB.open(db_path).metadata()
    for column in ("label_motion", "label_grasp", "label_command"):
        accuracy = (frame[column] == frame["error_type"]).mean()
        assert accuracy > 1 / 9, column  # 9 error types: chance is 11 %
    # Any pair of classifiers disagrees somewhere or agrees everywhere: both are allowed, but the
    # labels must be drawn from the error types or "none".
    from gauntlet.envs.injectors import ERROR_TYPES

    labels = set(frame[["label_motion", "label_grasp", "label_command"]].to_numpy().ravel())
    assert labels <= set(ERROR_TYPES) | {"none"}


# ------------------------------------------------------------------------------- bad input
def test_missing_db_and_unknown_scene(tmp_path: Path, db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["scenes", "check", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli(["scenes", "show", str(db_path), "lift-D9-nothing"]) == 1
    assert "no scene with scene_id 'lift-D9-nothing'" in capsys.readouterr().err


def test_corrupt_manifest_wrong_schema_and_empty_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    SceneDB.create(empty)
    assert cli(["scenes", "check", str(empty)]) == 1
    assert "empty" in capsys.readouterr().err
    (empty / "manifest.json").write_text("{not json")
    assert cli(["scenes", "check", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "manifest.json" in err and "corrupt" in err
    (empty / "manifest.json").write_text(json.dumps({"format": "gauntlet-scene-db", "schema_version": 99}))
    assert cli(["scenes", "check", str(empty)]) == 1
    assert "schema_version 99" in capsys.readouterr().err


def test_missing_and_corrupt_array_files_name_the_file(db_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "db"
    shutil.copytree(db_path, copy)
    db = SceneDB.open(copy)
    first, second = db.metadata()["scene_id"][:2]
    db.arrays_path(first).unlink()
    db.arrays_path(second).write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(SceneDBError, match=f"{first}.npz: scene array file is missing"):
        db.load_state(first)
    with pytest.raises(SceneDBError, match=f"{second}.npz: corrupt"):
        db.load_state(second)
    frame = __import__("gauntlet.envs.scene_check", fromlist=["compatibility"]).compatibility(db)
    assert not frame.set_index("scene_id").loc[first, "compatible"]


def test_a_scene_id_that_is_a_path_reads_nothing_outside_the_database(db_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "db"
    shutil.copytree(db_path, copy)
    db = SceneDB.open(copy)
    first = db.metadata()["scene_id"][0]
    shutil.copy(db.arrays_path(first), copy / "outside.npz")  # a readable scene file one level up
    for scene_id in ("../outside", "/etc/passwd", "a/../../outside", ".hidden", ""):
        with pytest.raises(SceneDBError, match="is not a name of the form"):
            db.load_state(scene_id)
    assert db.load_state(first)  # real ids still load
    frame = db.metadata()
    frame.loc[0, "scene_id"] = "../outside"  # as a database someone else wrote could hold it
    from gauntlet.envs.scene_check import (
        SubsetDB,  # the pre-flight view: given rows, real files
        compatibility,
    )

    checked = compatibility(SubsetDB(db, frame))
    assert not checked.loc[0, "compatible"] and "not a name" in checked.loc[0, "incompatible_reason"]
    assert checked.loc[1:, "compatible"].all()  # the other scenes are unaffected


def test_corrupt_parquet_is_reported(db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "db"
    shutil.copytree(db_path, copy)
    (copy / "scenes.parquet").write_bytes(b"garbage")
    assert cli(["scenes", "check", str(copy)]) == 1
    assert "scenes.parquet: corrupt Parquet" in capsys.readouterr().err


def test_bad_generate_arguments_touch_nothing(db_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "db"
    shutil.copytree(db_path, copy)
    before = _digest(copy)
    for bad in (["--tasks", "juggle"], ["--variants", "D9"], ["--error-types", "meteor"], ["--per-combo", "0"]):
        with pytest.raises(SystemExit) as info:
            cli(["scenes", "generate", "--out", str(copy), *bad])
        assert info.value.code != 0
    assert _digest(copy) == before


def test_appending_keeps_existing_scenes(db_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "db"
    shutil.copytree(db_path, copy)
    before = SceneDB.open(copy).metadata()
    assert cli(["scenes", "generate", "--out", str(copy), "--tasks", "lift", "--variants", "D0",
                "--error-types", "object_pose_perturb", "--workers", "1", "--no-validate"]) == 0
    after = SceneDB.open(copy).metadata()
    assert len(after) == len(before) + 1
    pd.testing.assert_frame_equal(after.iloc[: len(before)].reset_index(drop=True), before)
    assert not after.iloc[-1]["recoverable"]  # --no-validate: not tagged recoverable
