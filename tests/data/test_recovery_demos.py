"""`gauntlet data collect --from-scenes DB`: the scripted oracle recovering from real scenes of every
injector (each lift one, and stack's `target_shift`), recorded as tagged demonstrations that load in
the trainer, merge with nominal demonstrations of another variant and export to LeRobot v3.0 (read
with pyarrow, and (slow) with LeRobot's own class).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gauntlet.data.dataset_reader import open_dataset
from gauntlet.data.dataset_validation import validate
from gauntlet.data.lerobot_export import ExportConfig, export_lerobot
from gauntlet.data.lerobot_import import ImportConfig, import_lerobot
from gauntlet.data.loader import make_loader
from gauntlet.data.recovery_demos import RecoveryConfig
from gauntlet.envs.env import EnvConfig, GauntletEnv
from gauntlet.envs.injectors import SPECS
from gauntlet.envs.scene_db import SceneDB
from gauntlet.platform.cli import main as cli

LIFT_ERRORS = sorted(name for name in SPECS if SPECS[name].applies_to("lift"))
TAGS = ["recovery", "scene_id", "error_type", "origin"]


@pytest.fixture(scope="module")
def scenes(generate_scenes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One lift D0 scene per injector."""
    return generate_scenes(tmp_path_factory.mktemp("recovery") / "db", variants="D0", error_types="all", workers=1)


@pytest.fixture(scope="module")
def mixed_scenes(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lift scenes plus a stack D1 `target_shift` scene (the injector only stack has), in one database."""
    db = tmp_path_factory.mktemp("recovery") / "mixed"
    shutil.copytree(scenes, db)
    assert cli(["scenes", "generate", "--out", str(db), "--tasks", "stack", "--variants", "D1", "--error-types",
                "target_shift", "--workers", "1", "--no-validate"]) == 0
    return db


@pytest.fixture(scope="module")
def stack_recoveries(mixed_scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recovery") / "stack"
    assert cli(["data", "collect", "--from-scenes", str(mixed_scenes), "--tasks", "stack", "--out", str(out),
                "--horizon", "500", "--object-state"]) == 0
    return out


@pytest.fixture(scope="module")
def recoveries(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recovery") / "rec"
    assert cli(["data", "collect", "--from-scenes", str(scenes), "--out", str(out), "--horizon", "300",
                "--object-state"]) == 0
    return out


def test_every_injectors_scene_is_recovered_from_its_exact_state(scenes: Path, recoveries: Path) -> None:
    db = SceneDB.open(scenes)
    ds = validate(recoveries, expected_action_dim=7, expected_state_dim=8, split="train")
    eps = ds.episodes
    assert sorted(eps["error_type"]) == LIFT_ERRORS
    assert eps["recovery"].tolist() == [True] * len(LIFT_ERRORS) and set(eps["origin"]) == {"injected"}
    assert sorted(eps["scene_id"]) == sorted(db.metadata()["scene_id"]) and eps["success"].all()
    assert ds.info["source"]["kind"] == "recovery" and ds.info["source"]["skipped"] == []
    for ep, scene_id in enumerate(eps["scene_id"]):
        got = ds.episode(ep, sim=True)
        state = db.load_state(scene_id)
        for key, value in state.items():  # the recorded start state is the scene's, bit for bit
            np.testing.assert_array_equal(got[f"init/{key}"], value)
        env = GauntletEnv(EnvConfig.from_json(db.row(scene_id)["env_config"]))
        try:
            db.restore(env, scene_id)
            np.testing.assert_array_equal(got["sim_states"][0], env.sim.get_state().flatten())
            np.testing.assert_array_equal(got["observation.state"][0], env.observe(images=False)["observation/state"])
            if ep == 0:  # the stored actions replay the recovery from the scene to success
                success = False
                for t, action in enumerate(got["action"]):
                    np.testing.assert_array_equal(got["sim_states"][t], env.sim.get_state().flatten())
                    success = env.step(action.astype(np.float64))
                assert success
        finally:
            env.close()


def test_stats_and_loader_carry_the_tags(recoveries: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["data", "stats", str(recoveries)]) == 0
    out = capsys.readouterr().out
    assert f"recovery: {len(LIFT_ERRORS)} episodes" in out and "by origin: injected=" in out
    with make_loader(recoveries, batch_size=8, chunk_len=4) as loader:
        batch = next(iter(loader))
    assert batch["recovery"].dtype == bool and batch["recovery"].all()


def test_a_foreign_fingerprint_scene_is_skipped_and_recorded(scenes: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "db"
    shutil.copytree(scenes, db)
    meta = pd.read_parquet(db / "scenes.parquet")
    foreign = meta.loc[meta["error_type"] == "drop", "scene_id"].item()
    meta.loc[meta["scene_id"] == foreign, "fingerprint"] = "f" * 64
    meta.to_parquet(db / "scenes.parquet")
    out = tmp_path / "rec"
    assert cli(["data", "collect", "--from-scenes", str(db), "--error-types", "drop,object_push", "--out",
                str(out), "--horizon", "300"]) == 0
    assert f"skipped scene {foreign}: fingerprint mismatch" in capsys.readouterr().out
    ds = open_dataset(out)
    assert ds.episodes["error_type"].tolist() == ["object_push"]
    [skipped] = ds.info["source"]["skipped"]
    assert skipped["scene_id"] == foreign and skipped["reason"].startswith("fingerprint mismatch")
    # Nothing recoverable: a clear error, no dataset.
    assert cli(["data", "collect", "--from-scenes", str(db), "--error-types", "drop", "--out",
                str(tmp_path / "none")]) == 1
    assert "no recovery was kept (1 scenes skipped" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="trials=2 needs noise_std > 0"):
        RecoveryConfig(out="x", from_scenes=str(db), trials=2)
    with pytest.raises(ValueError, match="origins"):
        RecoveryConfig(out="x", from_scenes=str(db), origins=("invented",))


def test_lerobot_export_carries_the_tags_and_imports_them_back(recoveries: Path, tmp_path: Path) -> None:
    out = export_lerobot(ExportConfig(dataset=str(recoveries), out=str(tmp_path / "lerobot")))
    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pandas()
    source = open_dataset(recoveries).episodes
    assert episodes[TAGS].astype(object).values.tolist() == source[TAGS].astype(object).values.tolist()
    back = open_dataset(import_lerobot(ImportConfig(source=str(out), out=str(tmp_path / "back"))))
    assert back.episodes[TAGS].astype(object).values.tolist() == source[TAGS].astype(object).values.tolist()


def test_nominal_plus_recovery_merge_and_train(ray_session, recoveries: Path, tmp_path: Path) -> None:
    from gauntlet.platform.train.driver import TrainConfig, run_train
    from gauntlet.policies.bc_rnn import config_for_task
    from gauntlet.policies.bc_rnn.policy import BCRNNPolicy

    nominal = tmp_path / "nominal"
    assert cli(["data", "collect", "--task", "lift", "--episodes", "1", "--horizon", "300", "--object-state",
                "--out", str(nominal)]) == 0
    mixed = tmp_path / "mixed"
    assert cli(["data", "merge", str(nominal), str(recoveries), "--out", str(mixed)]) == 0
    ds, nom, rec = open_dataset(mixed), open_dataset(nominal), open_dataset(recoveries)
    assert ds.num_frames == nom.num_frames + rec.num_frames
    assert ds.episodes["recovery"].tolist() == [False] + [True] * rec.num_episodes
    for column in ("observation.state", "action", "observation.object_state"):  # every frame, in order
        np.testing.assert_array_equal(ds.load_columns([column])[column], np.concatenate(
            [part.load_columns([column])[column] for part in (nom, rec)]))
    assert ds.info["source"]["parts"][1]["recovery_frames"] == rec.num_frames
    assert cli(["data", "stats", str(mixed)]) == 0
    base = BCRNNPolicy.create(config_for_task("lift", hidden_size=32, mlp_hidden=32), seed=0).save(tmp_path / "base")
    out = tmp_path / "trained"
    run_train(TrainConfig(dataset=str(mixed), out=str(out), base=str(base), policy="bc_rnn", mode="full", steps=2,
                          batch_size=4, checkpoint_every=2, report_every=1, log_every=1, cpus_per_worker=0.5))
    assert BCRNNPolicy.load(out).metadata.name


# ---------------------------------------------------------------------- LeRobot itself (slow)
def _lerobot_episode_tags(root: str) -> dict[str, Any]:
    """Runs inside the lerobot environment: the episode columns LeRobotDataset keeps."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("gauntlet/recovery-test", root=root)
    return {"len": len(ds), **{k: list(ds.meta.episodes[k]) for k in TAGS}}


@pytest.mark.slow
def test_lerobot_dataset_class_keeps_the_tags(run_in_lerobot, recoveries: Path, stack_recoveries: Path,
                                              tmp_path: Path) -> None:
    """Every injector's recoveries (lift's, and stack's target_shift) load in LeRobot's own class."""
    for name, dataset in (("lift", recoveries), ("stack", stack_recoveries)):
        out = export_lerobot(ExportConfig(dataset=str(dataset), out=str(tmp_path / name)))
        seen = run_in_lerobot(_lerobot_episode_tags, str(out))
        source = open_dataset(dataset)
        assert seen["len"] == source.num_frames
        for k in TAGS:
            assert seen[k] == source.episodes[k].astype(object).tolist()


def test_stack_target_shift_recovery_loads_and_exports(stack_recoveries: Path, tmp_path: Path) -> None:
    from gauntlet.envs.tasks import get_task

    ds = validate(stack_recoveries, expected_action_dim=7, expected_state_dim=8, split="train")
    assert ds.episodes[["task", "variant", "error_type", "origin"]].values.tolist() == \
        [["stack", "D1", "target_shift", "injected"]]
    assert ds.episodes["recovery"].tolist() == [True] and ds.episodes["success"].all()
    assert list(ds.info["envs"]) == ["stack/D1"]
    with make_loader(stack_recoveries, batch_size=4, chunk_len=4) as loader:
        batch = next(iter(loader))
    assert batch["recovery"].all()
    width = ds.load_columns(["observation.object_state"])["observation.object_state"].shape[1]
    assert width == get_task("stack").object_state_dim
    out = export_lerobot(ExportConfig(dataset=str(stack_recoveries), out=str(tmp_path / "lerobot")))
    back = open_dataset(import_lerobot(ImportConfig(source=str(out), out=str(tmp_path / "back"))))
    assert back.episodes[TAGS].astype(object).values.tolist() == ds.episodes[TAGS].astype(object).values.tolist()


def test_object_state_of_two_widths_is_refused_before_recording(mixed_scenes: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rec"
    assert cli(["data", "collect", "--from-scenes", str(mixed_scenes), "--out", str(out), "--object-state"]) == 1
    err = capsys.readouterr()
    assert "--object-state (select one width with --tasks): the tasks' object states differ" in err.err
    assert "recoveries from" not in err.out and not out.exists()  # refused before the first recording


def test_d0_recoveries_merge_with_d1_demos_and_older_datasets(recoveries: Path, tmp_path: Path) -> None:
    """Env metadata is keyed task/variant, so D0 recoveries and D1 demos of one task merge; a part keyed
    by the bare task (older datasets) is read under its task/variant key."""
    nominal = tmp_path / "nominal"
    assert cli(["data", "collect", "--task", "lift", "--variant", "D1", "--episodes", "1", "--horizon", "300",
                "--object-state", "--out", str(nominal)]) == 0
    assert list(open_dataset(nominal).info["envs"]) == ["lift/D1"]
    mixed = tmp_path / "mixed"
    assert cli(["data", "merge", str(nominal), str(recoveries), "--out", str(mixed)]) == 0
    envs = open_dataset(mixed).info["envs"]
    assert sorted(envs) == ["lift/D0", "lift/D1"]
    assert envs["lift/D1"] == open_dataset(nominal).info["envs"]["lift/D1"]
    assert envs["lift/D0"]["env_config"]["variant"] == "D0"
    info_path = nominal / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["envs"] = {"lift": info["envs"]["lift/D1"]}  # how a single-variant collect keyed it before
    info_path.write_text(json.dumps(info))
    assert cli(["data", "merge", str(nominal), str(recoveries), "--out", str(tmp_path / "again")]) == 0
    assert open_dataset(tmp_path / "again").info["envs"] == envs


def test_unite_env_keeps_every_configuration() -> None:
    from gauntlet.data.dataset_schema import unite_env

    envs: dict[str, dict[str, Any]] = {}
    assert unite_env(envs, "lift", "D0", {"image_size": 64}) == "lift/D0"
    assert unite_env(envs, "lift", "D0", {"image_size": 64}) == "lift/D0"  # the same configuration: one entry
    other = unite_env(envs, "lift", "D0", {"image_size": 128})
    assert other.startswith("lift/D0#") and envs[other] == {"image_size": 128} and len(envs) == 2
    assert unite_env(envs, "lift", "D0", {"image_size": 128}) == other and len(envs) == 2
