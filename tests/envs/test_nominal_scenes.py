"""Nominal scenes (category nominal, error type none): the task's start state, generated, checked,
restored and replayed like any scene; and which scenes each `--error-types`/`--nominal` asks for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gauntlet.envs.env import EnvConfig, GauntletEnv, make_env
from gauntlet.envs.env_errors import EnvironmentMismatchError
from gauntlet.envs.injectors import ERROR_TYPES, NOMINAL, NOMINAL_CATEGORY, SPECS
from gauntlet.envs.scene_db import SceneDB
from gauntlet.envs.scenes_cli import GenerateConfig, jobs_for
from gauntlet.platform.cli import main as cli


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nominal") / "db"
    rc = cli(["scenes", "generate", "--out", str(out), "--tasks", "lift,stack", "--variants", "D0", "--nominal",
              "--error-types", "drop", "--workers", "2", "--recovery-horizon", "200"])
    assert rc == 0
    return out


def _nominal_rows(db: SceneDB):
    meta = db.metadata()
    return meta[meta["error_type"] == NOMINAL]


def test_nominal_rows_are_start_states_the_expert_solves(db_path: Path) -> None:
    db = SceneDB.open(db_path)
    nominal = _nominal_rows(db)
    assert sorted(nominal["task"]) == ["lift", "stack"] and len(db) == 4  # + one drop scene per task
    assert (nominal["category"] == NOMINAL_CATEGORY).all() and (nominal["phase"] == "start").all()
    assert (nominal["magnitude"] == 0.0).all() and (nominal["inject_step"] == 0).all()
    assert (nominal["settle_steps"] == 0).all() and nominal["recoverable"].all()
    assert (nominal["recovery_steps"] > 0).all()  # the expert solves the task from the start
    for column in ("label_motion", "label_grasp", "label_command"):
        assert (nominal[column] == "none").all(), column  # nothing happened, and the classifiers agree
    assert all(json.loads(p)["magnitude"] == 0.0 for p in nominal["injection_params"])


def test_nominal_state_is_the_seeded_reset_and_restores_exactly(db_path: Path) -> None:
    db = SceneDB.open(db_path)
    for _, row in _nominal_rows(db).iterrows():
        cfg = EnvConfig.from_json(row["env_config"])
        fresh = GauntletEnv(cfg)
        fresh.reset(int(row["seed"]))
        saved = db.load_state(row["scene_id"])
        reset_state = fresh.get_state()
        env = GauntletEnv(cfg)
        env.reset(12345)
        db.restore(env, row["scene_id"])
        restored = env.get_state()
        assert set(restored) == set(saved) == set(reset_state)
        for key in saved:
            assert np.array_equal(np.asarray(restored[key]), np.asarray(saved[key])), key
            assert np.array_equal(np.asarray(reset_state[key]), np.asarray(saved[key])), key


def test_restored_nominal_scene_replays_the_oracle_and_checks_fingerprints(db_path: Path) -> None:
    from gauntlet.envs.experts import make_expert

    db = SceneDB.open(db_path)
    row = _nominal_rows(db).iloc[0]
    env = make_env(row["task"], row["variant"])
    db.restore(env, row["scene_id"])
    expert = make_expert(env, seed=int(row["seed"]))
    steps = next(t + 1 for t in range(400) if env.step(expert.act()))
    assert steps == row["recovery_steps"]
    other = GauntletEnv(EnvConfig(task=row["task"], control_freq=10))
    with pytest.raises(EnvironmentMismatchError):
        db.restore(other, row["scene_id"])


def test_check_counts_nominal_scenes(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["scenes", "check", str(db_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 4 and report["compatible"] == 4
    assert report["by_category"][NOMINAL_CATEGORY]["total"] == 2
    assert report["by_category"][NOMINAL_CATEGORY]["recoverable_fraction"] == 1.0
    assert report["by_error_type"][NOMINAL]["total"] == 2 and report["by_error_type"]["drop"]["total"] == 2


# ---------------------------------------------------------------------- which scenes are asked for
def _kinds(*argv: str) -> list[tuple[str, str]]:
    from gauntlet.runtime.config_args import parse_config

    cfg = parse_config(GenerateConfig, ["--out", "x", "--variants", "D0", *argv], "p", "d")
    return [(j.task, j.error_type) for j in jobs_for(cfg)]


def test_all_keeps_its_meaning_and_nominal_is_asked_for() -> None:
    every = _kinds("--tasks", "lift,stack")
    assert NOMINAL not in {e for _, e in every}  # off by default: existing databases get no new kind of row
    assert len(every) == sum(SPECS[e].applies_to(t) for t in ("lift", "stack") for e in ERROR_TYPES)
    with_nominal = _kinds("--tasks", "lift,stack", "--nominal", "--per-combo", "2")
    assert with_nominal.count(("lift", NOMINAL)) == 2 and with_nominal.count(("stack", NOMINAL)) == 2
    assert len(with_nominal) == 2 * len(every) + 4
    assert _kinds("--tasks", "lift", "--error-types", "none") == [("lift", NOMINAL)]
    assert _kinds("--tasks", "lift", "--error-types", "none,drop") == [("lift", NOMINAL), ("lift", "drop")]
    assert _kinds("--tasks", "lift", "--error-types", "all", "--no-nominal") == [
        ("lift", e) for e in ERROR_TYPES if SPECS[e].applies_to("lift")]
    with pytest.raises(SystemExit):
        _kinds("--error-types", "nope")
