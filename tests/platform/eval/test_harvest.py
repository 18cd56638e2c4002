"""`gauntlet scenes harvest` on real robosuite and a real local Ray: a uniform-random policy on nominal lift
scenes fails (it never gets near the cube), and its failures become scenes that restore bit-exactly, carry
the classifiers' labels and their provenance, are not harvested twice, and evaluate like any scene."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gauntlet.envs.env import EnvConfig, GauntletEnv
from gauntlet.envs.error_classifiers import CLASSIFIERS
from gauntlet.envs.harvest import majority_label
from gauntlet.envs.scene_db import HARVESTED, PROVENANCE_DEFAULTS, SceneDB
from gauntlet.envs.scene_generation import oracle_recovery_steps
from gauntlet.platform.cli import main as cli

HARVEST = ["--policy", "random", "--actors", "1", "--horizon", "60", "--no-progress-steps", "15",
           "--recovery-horizon", "150"]


@pytest.fixture(scope="module")
def harvested(ray_session, tmp_path_factory: pytest.TempPathFactory, generate_scenes) -> tuple[Path, Path, str]:
    """(source DB of 2 nominal lift scenes, harvested DB, the harvest's printed output)."""
    root = tmp_path_factory.mktemp("harvest")
    src = generate_scenes(root / "src", variants="D0,D1", error_types="none", workers=1)
    into = root / "into"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["scenes", "harvest", "--scenes", str(src), "--into", str(into), *HARVEST]) == 0
    return src, into, out.getvalue()


def _env(row: dict) -> GauntletEnv:
    return GauntletEnv(EnvConfig.from_json(row["env_config"]))


def test_harvested_scenes_restore_bit_exactly_with_labels_and_provenance(harvested) -> None:
    src, into, printed = harvested
    sources = SceneDB.open(src).metadata().set_index("scene_id")
    db = SceneDB.open(into)
    meta = db.metadata()
    assert len(meta) >= 1 and (meta["origin"] == HARVESTED).all()
    assert "[harvest]" in printed and f"{len(meta)} scene(s) so far" in printed
    for row in meta.to_dict("records"):
        # Provenance: the target, no checkpoint (random has none), the source episode and step.
        assert row["policy_target"] == "random" and row["policy_digest"] == ""
        assert row["source_scene_id"] in sources.index and row["source_trial"] == 0 and row["source_step"] >= 1
        source = sources.loc[row["source_scene_id"]]
        assert row["fingerprint"] == source["fingerprint"] and row["task"] == "lift"
        assert row["variant"] == source["variant"] and row["seed"] == source["seed"]
        # Labels are the three classifiers' on the stored window, the error type their majority.
        arrays = db.load_arrays(row["scene_id"])
        traj = {k: v for k, v in arrays.items() if k.startswith("traj/")}
        labels = {name: clf(traj) for name, clf in CLASSIFIERS.items()}
        assert {name: row[f"label_{name}"] for name in labels} == labels
        assert row["error_type"] == majority_label(labels)
        assert int(traj["traj/inject_index"]) >= 1 and len(traj["traj/eef_pos"]) > int(traj["traj/inject_index"])
        # Restore is bit-exact: the state read back equals the stored one byte for byte, and two
        # fresh envs restored from it step on identically.
        stored = db.load_state(row["scene_id"])
        env_a, env_b = _env(row), _env(row)
        try:
            db.restore(env_a, row["scene_id"])
            db.restore(env_b, row["scene_id"])
            again = env_a.get_state()
            assert set(again) == set(stored)
            assert all(np.asarray(again[k]).tobytes() == np.asarray(stored[k]).tobytes() for k in stored)
            action = np.array([0.3, -0.2, 0.1, 0.0, 0.0, 0.0, 1.0])
            for _ in range(5):
                env_a.step(action)
                env_b.step(action)
            assert env_a.get_state()["mj_state"].tobytes() == env_b.get_state()["mj_state"].tobytes()
            # The oracle verdict replays: the same expert from the same state needs the same steps.
            db.restore(env_a, row["scene_id"])
            assert oracle_recovery_steps(env_a, int(row["seed"]), 150) == row["recovery_steps"]
            assert row["recoverable"] == (row["recovery_steps"] >= 0)
        finally:
            env_a.close()
            env_b.close()


def test_check_counts_harvested_scenes_by_origin(harvested, capsys) -> None:
    _, into, _ = harvested
    capsys.readouterr()
    assert cli(["scenes", "check", str(into), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {k: v["total"] for k, v in report["by_origin"].items()} == {HARVESTED: len(SceneDB.open(into))}


def test_harvesting_the_same_episodes_again_adds_no_duplicate(harvested, tmp_path: Path, capsys) -> None:
    src, into, _ = harvested
    copy = tmp_path / "into"
    shutil.copytree(into, copy)
    before = len(SceneDB.open(copy))
    capsys.readouterr()
    # One actor, the same scenes in the same order: the seeded random policy repeats its episodes.
    assert cli(["scenes", "harvest", "--scenes", str(src), "--into", str(copy), "--run", str(tmp_path / "run2"),
                *HARVEST]) == 0
    summary = json.loads(capsys.readouterr().out.split("[harvest] finished: ")[1])
    assert summary["harvested"] == 0 and summary["duplicates"] == before
    assert len(SceneDB.open(copy)) == before


def test_the_harvested_db_evaluates_and_skips_a_foreign_fingerprint(harvested, tmp_path: Path) -> None:
    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval
    from gauntlet.platform.eval.results import ResultsStore

    _, into, _ = harvested
    db = tmp_path / "db"
    shutil.copytree(into, db)
    meta = pd.read_parquet(db / "scenes.parquet")
    foreign = meta["scene_id"].iloc[0]
    meta.loc[meta["scene_id"] == foreign, "fingerprint"] = "f" * 64
    meta.to_parquet(db / "scenes.parquet")
    run = tmp_path / "run"
    run_eval(EvalConfig(scenes=str(db), policy=("scripted",), out=str(run), actors=1, horizon=20))
    rows = ResultsStore(run).read()
    assert len(rows) == len(meta) and (rows["origin"] == HARVESTED).all()
    skipped = rows[rows["skipped"]]
    assert list(skipped["scene_id"]) == [foreign]
    assert skipped["skip_reason"].str.contains("fingerprint mismatch").all()
    assert (rows.loc[~rows["skipped"], "steps"] > 0).all()
    # Their error type is the classifiers' majority, so the report does not score the classifiers on them.
    from gauntlet.platform.report.tables import classifier_tables

    assert (classifier_tables(rows)["classifier_accuracy"]["n_scenes"] == 0).all()


def test_bad_input_exits_2_naming_the_flag(harvested, tmp_path: Path, capsys) -> None:
    src, _, _ = harvested
    into = str(tmp_path / "x")
    assert cli(["scenes", "harvest", "--scenes", str(src), "--policy", "no_such_policy", "--into", into]) == 2
    assert "--policy no_such_policy" in capsys.readouterr().err
    empty = tmp_path / "empty"
    SceneDB.create(empty)
    assert cli(["scenes", "harvest", "--scenes", str(empty), "--policy", "random", "--into", into]) == 2
    err = capsys.readouterr().err
    assert "--scenes" in err and "empty" in err
    assert cli(["scenes", "harvest", "--scenes", str(src), "--policy", "random", "--into", into,
                "--error-types", "drop"]) == 2
    assert "--error-types" in capsys.readouterr().err


def test_a_database_without_provenance_columns_reads_with_their_defaults(harvested, tmp_path: Path) -> None:
    src, _, _ = harvested
    old = tmp_path / "old"
    shutil.copytree(src, old)
    table = pd.read_parquet(old / "scenes.parquet").drop(columns=list(PROVENANCE_DEFAULTS))
    table.to_parquet(old / "scenes.parquet")
    meta = SceneDB.open(old).metadata()
    for column, default in PROVENANCE_DEFAULTS.items():
        assert (meta[column] == default).all()


def test_a_harvest_refuses_an_into_another_harvest_holds(harvested, tmp_path: Path, capsys) -> None:
    from gauntlet.runtime.atomic_files import DirLock

    src, into, _ = harvested
    copy = tmp_path / "into"
    shutil.copytree(into, copy)
    with DirLock(copy):
        assert cli(["scenes", "harvest", "--scenes", str(src), "--into", str(copy), "--run", str(tmp_path / "r"),
                    *HARVEST]) == 2
    err = capsys.readouterr().err
    assert "--into" in err and "another harvest" in err
    assert not (tmp_path / "r").exists()


def test_the_digest_names_the_base_and_the_adapter(tmp_path: Path) -> None:
    """Provenance from eval's own parse of the TARGET: BASE@ADAPTER records both checkpoints' fingerprints."""
    import jax

    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.harvest import checkpoint_digest
    from gauntlet.platform.eval.targets import policy_targets
    from gauntlet.policies.checkpoints import read_manifest
    from gauntlet.policies.vla.policy import VLAPolicy

    base = VLAPolicy.create("tiny", seed=1)
    base.save(tmp_path / "base")
    base.add_adapter("d1", jax.tree_util.tree_map(np.asarray, base.init_adapter(0)))
    base.save_adapter("d1", tmp_path / "adapters" / "d1")
    fingerprint = {name: read_manifest(tmp_path / name)["fingerprint"] for name in ("base", "adapters/d1")}
    digests = {}
    for target in (f"vla={tmp_path / 'base'}", f"vla={tmp_path / 'base'}@{tmp_path / 'adapters' / 'd1'}",
                   f"deploy=vla={tmp_path / 'base'}", "random", "serve=vla", "remote=ws://127.0.0.1:1"):
        targets, deploy = policy_targets(EvalConfig(scenes=str(tmp_path), policy=(target,), out=str(tmp_path / "r")))
        digests[target] = checkpoint_digest(targets[0], deploy)
    assert list(digests.values()) == [fingerprint["base"], f"{fingerprint['base']}@{fingerprint['adapters/d1']}",
                                      fingerprint["base"], "", "", ""]
    assert fingerprint["base"] != fingerprint["adapters/d1"]


def test_long_source_ids_are_capped_and_a_stopped_harvest_resumes(harvested, tmp_path: Path, capsys) -> None:
    """A source id near the 200-character limit gives a harvested id within it (SceneDB.add would
    refuse a longer one); --max-scenes stops sending episodes, and --resume runs the rest."""
    from gauntlet.envs.scene_db import SCENE_ID_MAX_CHARS, SCENE_ID_RE
    from gauntlet.platform.eval.results import ResultsStore

    src, into, _ = harvested
    source = SceneDB.open(into).metadata()["source_scene_id"].iloc[0]  # a scene the random policy fails on
    long_db = tmp_path / "long"
    shutil.copytree(src, long_db)
    meta = pd.read_parquet(long_db / "scenes.parquet")
    meta = meta[meta["scene_id"] == source]
    long_id = "x" * 150 + source
    meta["scene_id"] = long_id
    meta.to_parquet(long_db / "scenes.parquet")
    (long_db / "arrays" / f"{source}.npz").rename(long_db / "arrays" / f"{long_id}.npz")
    out, run = tmp_path / "into", tmp_path / "run"
    args = ["scenes", "harvest", "--scenes", str(long_db), "--into", str(out), "--run", str(run), *HARVEST,
            "--trials", "4"]
    capsys.readouterr()
    assert cli([*args, "--max-scenes", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.split("[harvest] finished: ")[1])
    assert summary["harvested"] == 1 and summary["not_run"] >= 1 and summary["sink_errors"] == 0
    assert len(ResultsStore(run).read()) == 4 - summary["not_run"]
    assert cli(args) == 2  # the run is there: finish it with --resume
    assert cli([*args, "--resume"]) == 0
    assert len(ResultsStore(run).read()) == 4
    rows = SceneDB.open(out).metadata()
    assert len(rows) >= 1 and (rows["source_scene_id"] == long_id).all()
    for scene_id in rows["scene_id"]:
        assert len(scene_id) <= SCENE_ID_MAX_CHARS and SCENE_ID_RE.fullmatch(scene_id)
    assert rows["scene_id"].is_unique


def test_a_sink_that_raises_costs_no_row(harvested, tmp_path: Path) -> None:
    """The episode's row is recorded before its watch result goes to the sink; a sink error is counted."""
    from gauntlet.envs.harvest import HarvestOptions
    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.dispatch import EpisodeWatch
    from gauntlet.platform.eval.driver import run_eval
    from gauntlet.platform.eval.results import ResultsStore

    src, _, _ = harvested

    def full_disk(item, payloads) -> None:
        raise OSError(28, "No space left on device")

    run = tmp_path / "run"
    summary = run_eval(EvalConfig(scenes=str(src), policy=("random",), out=str(run), actors=1, horizon=20),
                       EpisodeWatch(spec=HarvestOptions(), sink=full_disk))
    rows = ResultsStore(run).read()
    assert len(rows) == len(SceneDB.open(src)) == summary["ran"] and not rows["skipped"].any()
    assert summary["sink_errors"] == len(rows)
