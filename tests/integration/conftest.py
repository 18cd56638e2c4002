"""Shared pieces of the tests that run LeRobot's own evaluator (`lerobot-eval --env.type=gauntlet`) on
Gauntlet's scenes: a small scene database with one scene that starts solved, the LeRobot 0.6.1
environment as a Ray task (the replicas' runtime_env, built once per test session), the plugin installed
as a user installs it, and a random ACT checkpoint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "lerobot_env_gauntlet"


@dataclass(frozen=True)
class EvalScenes:
    """The scene database both evaluators run."""

    path: Path  # the database directory
    solved_id: str  # the scene that starts solved (sorts last: scene_id order is both evaluators' order)
    image_size: int  # px: scenes rendered and the policy trained at this size (no resize; CPU-fast)


SOLVED_ID = "lift-D0-zsolved-0000"
IMAGE_SIZE = 32


def _add_solved_scene(db_path: Path) -> None:
    """A copy of the first scene with the cube held 30 cm above the table, away from the gripper: lift's
    success holds after any first step, so this scene's episode succeeds whatever the policy does."""
    from gauntlet.envs.env import EnvConfig, GauntletEnv
    from gauntlet.envs.scene_db import SceneDB, SceneRecord

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


@pytest.fixture(scope="session")
def eval_scenes(tmp_path_factory: pytest.TempPathFactory) -> EvalScenes:
    """A 32 px lift database (drop, object_push) plus one scene that starts solved."""
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
    return EvalScenes(out, SOLVED_ID, IMAGE_SIZE)


@pytest.fixture(scope="session")
def lerobot_task(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Callable[[Callable[..., Any]], Any]:
    """`lerobot_task(fn)`: fn as a Ray remote function in the LeRobot environment (one CPU)."""
    from gauntlet.policies.lerobot.environment import runtime_env

    env = runtime_env()
    # The session's Serve gRPC bind hook imports ray.serve, which the LeRobot venv's protobuf breaks;
    # these tasks start no Serve proxy (as in test_lerobot_closed_loop).
    env["env_vars"] = {**env["env_vars"], "MUJOCO_GL": "egl", WORKER_PROCESS_SETUP_HOOK_ENV_VAR: "",
                       "HF_HOME": str(tmp_path_factory.mktemp("hf_home"))}

    def remote(fn: Callable[..., Any]) -> Any:
        if fn.__module__.split(".")[0] != "gauntlet":  # workers cannot import the tests: send it by value
            ray_session.cloudpickle.register_pickle_by_value(sys.modules[fn.__module__])
        return ray_session.remote(fn).options(runtime_env=env, num_cpus=1, max_retries=0)

    return remote


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's install: the plugin without its dependencies (the LeRobot environment has them), built
    from a copy so that the checkout stays clean; put this directory on the LeRobot process's path."""
    tmp = tmp_path_factory.mktemp("plugin")
    source, site = tmp / "plugin_src", tmp / "site"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True, timeout=300)
    return site


@pytest.fixture(scope="session")
def random_act(ray_session, lerobot_task, eval_scenes: EvalScenes, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random (seeded) ACT checkpoint at the scenes' image size, saved by LeRobot's own code."""
    from gauntlet.policies.lerobot.untrained_checkpoints import save_random_policy

    out = tmp_path_factory.mktemp("act") / "act"
    return ray_session.get(lerobot_task(save_random_policy).remote("act", str(out), image_size=eval_scenes.image_size),
                           timeout=1800)

