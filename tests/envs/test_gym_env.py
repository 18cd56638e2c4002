"""`gymnasium.make("gauntlet/Scenes-v0")` on a real scene database: exact restores (those eval's episodes
make), scene order and shards, stepping to success with the scripted oracle, skipped scenes, bad arguments,
and what the env side imports (the LeRobot plugin declares only that)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

from gauntlet.envs.gym import DEFAULT_MAX_EPISODE_STEPS, ENV_ID
from gauntlet.envs.gym.scenes_env import ScenesEnvArgumentError
from gauntlet.envs.scene_db import SceneDB
from gauntlet.keys import IMAGE_KEY, STATE_KEY, WRIST_IMAGE_KEY
from gauntlet.platform.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "lerobot_env_gauntlet"
SCENE_PX = 32  # the scenes' render size: small, so rendering on a CPU is quick
POLICY_PX = 16  # the size the env is asked for: eval's resize path runs


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gym") / "scenes"
    assert cli(["scenes", "generate", "--out", str(out), "--tasks", "lift", "--variants", "D0", "--error-types",
                "drop,object_push", "--workers", "1", "--image-size", str(SCENE_PX)]) == 0
    return out


def _make(db: Path, **kwargs) -> gym.Env:
    return gym.make(ENV_ID, scenes=str(db), **kwargs)


def test_reset_restores_the_state_and_observation_eval_gives(db_path: Path) -> None:
    from gauntlet.platform.eval.env_cache import EnvCache
    from gauntlet.platform.eval.episode import Episode, WorkItem, filter_obs
    from gauntlet.platform.eval.scenes import scene_records

    db = SceneDB.open(db_path)
    scenes = scene_records(db.metadata().sort_values("scene_id"))
    env = _make(db_path, image_size=POLICY_PX)
    try:
        assert env.unwrapped.scene_ids == sorted(scenes)
        for scene_id in [*sorted(scenes), sorted(scenes)[0]]:  # in scene_id order, then around again
            obs, info = env.reset(seed=7)
            assert info["scene_id"] == scene_id and info["error_type"] == scenes[scene_id]["error_type"]
            episode = Episode(db, WorkItem("run", scene_id, "p", 0, horizon=10), scenes[scene_id], None, "w", "v")
            episode.start(EnvCache())  # eval's restore: the env its policy would be asked about
            assert not episode.done, episode.row.get("skip_reason")
            expected_state = episode.env.get_state()
            state = env.unwrapped.gauntlet_env.get_state()
            assert set(state) == set(expected_state)
            for key, value in expected_state.items():
                np.testing.assert_array_equal(state[key], value, err_msg=key)
            shapes = {IMAGE_KEY: (POLICY_PX, POLICY_PX, 3), WRIST_IMAGE_KEY: (POLICY_PX, POLICY_PX, 3)}
            sent = filter_obs(episode.env.observe(images=True), frozenset([STATE_KEY, *shapes]), shapes)
            np.testing.assert_array_equal(obs["agent_pos"], sent[STATE_KEY])
            np.testing.assert_array_equal(obs["pixels"]["agentview"], sent[IMAGE_KEY])
            np.testing.assert_array_equal(obs["pixels"]["wrist"], sent[WRIST_IMAGE_KEY])
            assert env.observation_space.contains(obs)
            episode.close()
        assert env.unwrapped.task_description == "pick up the red cube"
        assert env.unwrapped.metadata["render_fps"] == json.loads(scenes[scene_id]["env_config"])["control_freq"]
        assert env.render().shape == (SCENE_PX, SCENE_PX, 3)  # videos at the scenes' own size
    finally:
        env.close()


def test_shards_split_the_scenes_and_scene_id_option_picks_one(db_path: Path) -> None:
    ids = sorted(SceneDB.open(db_path).metadata()["scene_id"])
    shards = [_make(db_path, cameras="", shard_index=i, num_shards=2) for i in range(2)]
    try:
        for i, env in enumerate(shards):
            assert env.unwrapped.scene_ids == [ids[i]]
            assert [env.reset()[1]["scene_id"] for _ in range(2)] == [ids[i], ids[i]]
        obs, info = shards[0].reset(options={"scene_id": ids[1]})
        assert info["scene_id"] == ids[1] and set(obs) == {"agent_pos"}
        assert shards[0].reset()[1]["scene_id"] == ids[0]  # the option did not advance the order
    finally:
        for env in shards:
            env.close()


def test_the_oracle_solves_a_recoverable_scene_in_its_recorded_steps(db_path: Path) -> None:
    from gauntlet.envs.experts import make_expert

    row = SceneDB.open(db_path).metadata().query("recoverable").iloc[0]
    env = _make(db_path, cameras="")
    try:
        env.reset(options={"scene_id": row["scene_id"]})
        expert = make_expert(env.unwrapped.gauntlet_env, seed=int(row["seed"]))
        steps, terminated, truncated = 0, False, False
        while not (terminated or truncated):  # the registered time limit ends it at the latest
            _, reward, terminated, truncated, info = env.step(expert.act().astype(np.float32))
            steps += 1
        assert (terminated, truncated, reward, info["is_success"]) == (True, False, 1.0, True)
        assert steps == row["recovery_steps"] and info["scene_id"] == row["scene_id"]
    finally:
        env.close()


def test_the_time_limit_truncates_without_success(db_path: Path) -> None:
    env = _make(db_path, cameras="", max_episode_steps=3)
    try:
        env.reset()
        outcomes = [env.step(np.zeros(7, np.float32))[2:4] for _ in range(3)]
        assert outcomes == [(False, False), (False, False), (False, True)]
    finally:
        env.close()


def test_unreplayable_scenes_are_skipped_and_recorded(db_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "db"
    shutil.copytree(db_path, copy)
    frame = pd.read_parquet(copy / "scenes.parquet").sort_values("scene_id")
    mismatched, corrupt = frame["scene_id"].iloc[0], frame["scene_id"].iloc[1]
    frame.loc[frame["scene_id"] == mismatched, "fingerprint"] = "0" * 64
    frame.to_parquet(copy / "scenes.parquet")
    env = _make(copy, cameras="")
    try:
        assert env.unwrapped.scene_ids == [corrupt]
        assert [(s["scene_id"], s["reason"][:20]) for s in env.unwrapped.skipped_scenes] == \
            [(mismatched, "fingerprint mismatch")]
        (copy / "arrays" / f"{corrupt}.npz").write_bytes(b"not a zip file")  # found only at restore
        with pytest.raises(RuntimeError, match="no scene .* could be restored"):
            env.reset()
        assert env.unwrapped.skipped_scenes[-1]["scene_id"] == corrupt
        assert "restore failed: SceneDBError" in env.unwrapped.skipped_scenes[-1]["reason"]
    finally:
        env.close()
    (copy / "scenes.parquet").unlink()
    frame.assign(fingerprint="0" * 64).to_parquet(copy / "scenes.parquet")
    with pytest.raises(ScenesEnvArgumentError, match="^scenes: none of the 2 selected scenes"):
        _make(copy)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tasks": "juggle"}, r"^scenes: tasks \['juggle'\] select no scenes \(the database has \['lift'\]\)"),
    ({"error_types": "earthquake"}, r"^scenes: error_types \['earthquake'\] select no scenes"),
    ({"image_size": 3}, r"^image_size: must be 0"),
    ({"cameras": "front"}, r"^cameras: unknown camera 'front'"),
    ({"render_camera": "top"}, r"^render_camera: unknown camera 'top'"),
    ({"shard_index": 2, "num_shards": 2}, r"^shard_index: must be in \[0, num_shards=2\)"),
    ({"limit": -1}, r"^limit: must be >= 0"),
])
def test_bad_arguments_name_the_argument(db_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ScenesEnvArgumentError, match=message):
        _make(db_path, **kwargs)


def test_a_missing_database_and_an_unknown_scene_id_name_the_argument(db_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ScenesEnvArgumentError, match=f"^scenes: {tmp_path / 'nowhere'}: no such scene database"):
        gym.make(ENV_ID, scenes=str(tmp_path / "nowhere"))
    with pytest.raises(TypeError, match="scene_db"):
        gym.make(ENV_ID, scene_db=str(db_path))
    env = _make(db_path, cameras="")
    try:
        with pytest.raises(ScenesEnvArgumentError, match=r"^options\['scene_id'\]: 'nope'"):
            env.reset(options={"scene_id": "nope"})
    finally:
        env.close()


def test_the_env_side_imports_no_torch_ray_or_jax_and_the_plugin_declares_gauntlets_pins(db_path: Path) -> None:
    """Registration imports no simulator; a whole episode step imports none of torch, ray, jax (what the
    plugin leaves out of its dependencies); the plugin's dependencies are Gauntlet's own specifiers."""
    script = (
        "import sys, json, numpy as np, gymnasium as gym\n"
        "import gauntlet.envs.gym\n"
        "light = sorted(m for m in ('mujoco', 'robosuite', 'pandas') if m in sys.modules)\n"
        f"env = gym.make({ENV_ID!r}, scenes={str(db_path)!r}, image_size=8)\n"
        "env.reset(); env.step(np.zeros(7, np.float32)); env.close()\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'jax', 'flax', 'lerobot') if m in sys.modules)\n"
        "print(json.dumps([light, heavy, 'robosuite' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[], [], True]
    gauntlet_deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    plugin = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    assert plugin["name"].startswith("lerobot_env_")  # what LeRobot's plugin discovery imports
    assert set(plugin["dependencies"]) <= set(gauntlet_deps)
    assert not [d for d in plugin["dependencies"] if d.split(">")[0].split("<")[0] in ("torch", "ray", "jax")]


def test_registered_defaults_match_gauntlet_eval() -> None:
    from gauntlet.platform.eval.config import EvalConfig

    assert gym.spec(ENV_ID).max_episode_steps == DEFAULT_MAX_EPISODE_STEPS
    assert DEFAULT_MAX_EPISODE_STEPS == EvalConfig.__dataclass_fields__["horizon"].default
