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
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gauntlet.envs.scene_db import SceneDB

pytestmark = pytest.mark.slow

# The scenes, the LeRobot task, the plugin's install and the checkpoint: tests/integration/conftest.py.
EPISODES, SUB_ENVS = 4, 2  # two rollouts of two sub-envs: scene order goes around the 3 scenes once
EPISODE_LENGTH = 6  # steps: the solved scene ends at step 1, the others cannot be solved this soon


def _lerobot_eval(site: str, args: list[str]) -> dict[str, Any]:
    """Runs in the LeRobot environment: its `lerobot-eval` console script, with `site` (the installed
    plugin) on the path. Returns the exit code and its output."""
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([str(Path(sys.executable).parent / "lerobot-eval"), *args], env=env,
                          capture_output=True, text=True, timeout=1200)
    return {"returncode": proc.returncode, "output": proc.stdout + proc.stderr}


def test_lerobot_eval_runs_gauntlet_scenes_through_the_plugin(eval_scenes, lerobot_task, plugin_site: Path,
                                                             random_act: str, tmp_path: Path) -> None:
    import ray

    scenes, solved = eval_scenes.path, eval_scenes.solved_id
    out = tmp_path / "eval"
    result = ray.get(lerobot_task(_lerobot_eval).remote(str(plugin_site), [
        "--env.type=gauntlet", f"--env.scenes={scenes}", f"--env.image_size={eval_scenes.image_size}",
        f"--env.episode_length={EPISODE_LENGTH}", f"--policy.path={random_act}", "--policy.device=cpu",
        f"--eval.n_episodes={EPISODES}", f"--eval.batch_size={SUB_ENVS}", "--eval.use_async_envs=false",
        f"--output_dir={out}"]), timeout=1800)
    assert result["returncode"] == 0, result["output"][-6000:]
    # LeRobot's plugin discovery found the installed distribution (its own log line).
    assert "Imported third-party plugin: lerobot_env_gauntlet" in result["output"]

    info = json.loads((out / "eval_info.json").read_text())
    order = sorted(SceneDB.open(scenes).metadata()["scene_id"])
    assert order[-1] == solved and len(order) == 3
    expected = [order[e % len(order)] == solved for e in range(EPISODES)]  # [False, False, True, False]
    (task,) = info["per_task"]
    assert task["task_group"] == "gauntlet"
    assert task["metrics"]["successes"] == expected
    assert task["metrics"]["sum_rewards"] == [float(s) for s in expected]  # reward 1 at the success step
    assert info["overall"]["n_episodes"] == EPISODES
    assert info["overall"]["pc_success"] == pytest.approx(100 * sum(expected) / EPISODES)
    videos = [Path(p) for p in info["overall"]["video_paths"]]
    assert len(videos) == EPISODES and all(p.is_file() and p.stat().st_size > 0 for p in videos)
