"""LeRobot's own evaluator on Gauntlet's scenes: `lerobot-eval --env.type=gauntlet` with the
lerobot_env_gauntlet plugin, a random ACT checkpoint, inside the LeRobot 0.6.1 environment.

The environment is the one Gauntlet's LeRobot replicas use (a Ray task with its runtime_env: Ray builds it
once per test session for this module and the other LeRobot tests). The plugin is installed the way a
user installs it, without dependencies, into a directory on that process's PYTHONPATH, where LeRobot's
plugin discovery (installed `lerobot_env_*` distributions) finds it. One of the scenes starts solved, so
eval_info.json's per-episode successes show which scene each episode ran: episode e runs selected scene
e mod N, across the vector env's sub-envs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

from gauntlet.envs.scene_db import SceneDB, SceneRecord

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "lerobot_env_gauntlet"
IMAGE_SIZE = 32  # px: scenes rendered and the policy trained at this size (no resize; CPU-fast)
EPISODES, SUB_ENVS = 4, 2  # two rollouts of two sub-envs: scene order goes around the 3 scenes once
EPISODE_LENGTH = 6  # steps: the solved scene ends at step 1, the others cannot be solved this soon
SOLVED_ID = "lift-D0-zsolved-0000"  # sorts last


def _add_solved_scene(db_path: Path) -> None:
    """A copy of the first scene with the cube held 30 cm above the table, away from the gripper: lift's
    success holds after any first step, so this scene's episode succeeds whatever the policy does."""
    from gauntlet.envs.env import EnvConfig, GauntletEnv

    db = SceneDB.open(db_path)
    source = sorted(db.metadata()["scene_id"])[0]
    row = db.row(source)
    env = GauntletEnv(EnvConfig.from_json(row["env_config"]))
    db.restore(env, source)
    joint = env.raw.cube.joints[0]
    qpos = np.array(env.sim.data.get_joint_qpos(joint))
    qpos[1] += 0.25
    qpos[2] = env.raw.table_offset[2] + 0.3
    env.sim.data.set_joint_qpos(joint, qpos)
    env.sim.data.set_joint_qvel(joint, np.zeros(6))
    env.sim.forward()
    arrays = {k: v for k, v in db.load_arrays(source).items() if not k.startswith("state/")}
    arrays.update({f"state/{k}": v for k, v in env.get_state().items()})
    env.close()
    db.add([SceneRecord({**row, "scene_id": SOLVED_ID, "recovery_steps": 1}, arrays)])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gymnasium as gym

    from gauntlet.envs.gym import ENV_ID
    from gauntlet.platform.cli import main as cli

    out = tmp_path_factory.mktemp("lerobot_eval") / "scenes"
    assert cli(["scenes", "generate", "--out", str(out), "--tasks", "lift", "--variants", "D0", "--error-types",
                "drop,object_push", "--workers", "1", "--image-size", str(IMAGE_SIZE), "--no-validate"]) == 0
    _add_solved_scene(out)
    env = gym.make(ENV_ID, scenes=str(out), cameras="")  # the solved scene, as Gauntlet's own stepping sees it
    env.reset(options={"scene_id": SOLVED_ID})
    assert env.step(np.zeros(7, np.float32))[4]["is_success"]
    env.close()
    return out


def _lerobot_eval(site: str, args: list[str]) -> dict[str, Any]:
    """Runs in the LeRobot environment: its `lerobot-eval` console script, with `site` (the installed
    plugin) on the path. Returns the exit code and its output."""
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([str(Path(sys.executable).parent / "lerobot-eval"), *args], env=env,
                          capture_output=True, text=True, timeout=1200)
    return {"returncode": proc.returncode, "output": proc.stdout + proc.stderr}


@pytest.fixture(scope="module")
def lerobot_task(ray_session, tmp_path_factory: pytest.TempPathFactory):
    """(a remote function in the LeRobot environment, ray)."""
    from gauntlet.policies.lerobot.environment import runtime_env

    env = runtime_env()
    # The session's Serve gRPC bind hook imports ray.serve, which the LeRobot venv's protobuf breaks;
    # these tasks start no Serve proxy (as in test_lerobot_closed_loop).
    env["env_vars"] = {**env["env_vars"], "MUJOCO_GL": "egl", WORKER_PROCESS_SETUP_HOOK_ENV_VAR: "",
                       "HF_HOME": str(tmp_path_factory.mktemp("hf_home"))}
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    return lambda fn: ray_session.remote(fn).options(runtime_env=env, num_cpus=1), ray_session


def test_lerobot_eval_runs_gauntlet_scenes_through_the_plugin(scenes: Path, lerobot_task, tmp_path: Path) -> None:
    from gauntlet.policies.lerobot.untrained_checkpoints import save_random_policy

    remote, ray = lerobot_task
    checkpoint = ray.get(remote(save_random_policy).remote("act", str(tmp_path / "act"), image_size=IMAGE_SIZE),
                         timeout=1800)
    # A user's install: the plugin without its dependencies (the LeRobot environment has them), built from
    # a copy so that the checkout stays clean.
    source, site = tmp_path / "plugin_src", tmp_path / "site"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True, timeout=300)
    out = tmp_path / "eval"
    result = ray.get(remote(_lerobot_eval).remote(str(site), [
        "--env.type=gauntlet", f"--env.scenes={scenes}", f"--env.image_size={IMAGE_SIZE}",
        f"--env.episode_length={EPISODE_LENGTH}", f"--policy.path={checkpoint}", "--policy.device=cpu",
        f"--eval.n_episodes={EPISODES}", f"--eval.batch_size={SUB_ENVS}", "--eval.use_async_envs=false",
        f"--output_dir={out}"]), timeout=1800)
    assert result["returncode"] == 0, result["output"][-6000:]
    # LeRobot's plugin discovery found the installed distribution (its own log line).
    assert "Imported third-party plugin: lerobot_env_gauntlet" in result["output"]

    info = json.loads((out / "eval_info.json").read_text())
    order = sorted(SceneDB.open(scenes).metadata()["scene_id"])
    assert order[-1] == SOLVED_ID and len(order) == 3
    expected = [order[e % len(order)] == SOLVED_ID for e in range(EPISODES)]  # [False, False, True, False]
    (task,) = info["per_task"]
    assert task["task_group"] == "gauntlet"
    assert task["metrics"]["successes"] == expected
    assert task["metrics"]["sum_rewards"] == [float(s) for s in expected]  # reward 1 at the success step
    assert info["overall"]["n_episodes"] == EPISODES
    assert info["overall"]["pc_success"] == pytest.approx(100 * sum(expected) / EPISODES)
    videos = [Path(p) for p in info["overall"]["video_paths"]]
    assert len(videos) == EPISODES and all(p.is_file() and p.stat().st_size > 0 for p in videos)
