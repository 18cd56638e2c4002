"""The same LeRobot checkpoint on the same scenes in both evaluators: LeRobot's `lerobot-eval
--env.type=gauntlet` (the plugin, in the LeRobot 0.6.1 environment) and `gauntlet eval --policy
lerobot=CKPT` (real Ray, a real Serve replica in that environment). Each scene runs once on each side.

Both are deterministic here (ACT at inference has no sampling; the scenes restore exactly), so the
check is per scene: the same success, and the same first action. The first action is the sharp test:
it is the checkpoint's answer to the scene's first observation as each evaluator built it, so a
difference means one side maps observations wrongly (image channel order or scale, state layout,
camera names). The random ACT's first actions differ between scenes (asserted), so it does read the
observation. Success alone could not tell: a random policy solves only the scene that starts solved.

LeRobot's side records what its env receives: the gym env's `step` is wrapped in the LeRobot task's
process (sync vector env, so every sub-env lives there) before `lerobot-eval`'s own `main` runs.
Gauntlet's side is the `first_action` column of its results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gauntlet.envs.scene_db import SceneDB

pytestmark = pytest.mark.slow

EPISODE_LENGTH = 6  # steps (`--env.episode_length` = `--horizon`): the solved scene ends at step 1
# Both sides run the same float32 ACT forward pass, but in differently composed batches (LeRobot's vector
# env of 3, Gauntlet's replica whatever arrived together): equal up to float32 rounding.
ACTION_ATOL = 1e-4


def _lerobot_eval_first_actions(site: str, args: list[str]) -> list[tuple[str, list[float]]]:
    """Runs in the LeRobot environment: `lerobot-eval`'s own `main` with `args`, the plugin in `site`,
    and the gym env's `reset`/`step` wrapped to record, per episode, (scene_id, the first action the
    env received)."""
    sys.path.insert(0, site)  # LeRobot's plugin discovery reads installed distributions on sys.path
    from gauntlet.envs.gym.scenes_env import ScenesEnv

    reset, step = ScenesEnv.reset, ScenesEnv.step
    fresh: set[int] = set()
    first: list[tuple[str, list[float]]] = []

    def recording_reset(self: ScenesEnv, **kwargs: Any) -> Any:
        fresh.add(id(self))
        return reset(self, **kwargs)

    def recording_step(self: ScenesEnv, action: Any) -> Any:
        out = step(self, action)
        if id(self) in fresh:
            fresh.discard(id(self))
            first.append((out[4]["scene_id"], np.asarray(action, np.float64).tolist()))
        return out

    ScenesEnv.reset, ScenesEnv.step = recording_reset, recording_step
    from lerobot.scripts.lerobot_eval import main

    sys.argv = ["lerobot-eval", *args]
    main()
    return first


def test_lerobot_eval_and_gauntlet_eval_agree(eval_scenes, lerobot_task, plugin_site: Path, random_act: str,
                                              tmp_path: Path) -> None:
    import ray

    from gauntlet.platform.cli import main as cli
    from gauntlet.platform.eval.results import ResultsStore

    order = sorted(SceneDB.open(eval_scenes.path).metadata()["scene_id"])
    n = len(order)
    out = tmp_path / "lerobot"
    # One rollout of n sub-envs: sub-env i runs scene i (the plugin's shards), each scene once.
    first = ray.get(lerobot_task(_lerobot_eval_first_actions).remote(str(plugin_site), [
        "--env.type=gauntlet", f"--env.scenes={eval_scenes.path}", f"--env.image_size={eval_scenes.image_size}",
        f"--env.episode_length={EPISODE_LENGTH}", f"--policy.path={random_act}", "--policy.device=cpu",
        f"--eval.n_episodes={n}", f"--eval.batch_size={n}", "--eval.use_async_envs=false",
        f"--output_dir={out}"]), timeout=1800)
    (task,) = json.loads((out / "eval_info.json").read_text())["per_task"]
    lerobot_success = dict(zip(order, task["metrics"]["successes"], strict=True))
    lerobot_first = dict(first)
    assert sorted(lerobot_first) == order and len(first) == n, first

    run = tmp_path / "gauntlet"
    assert cli(["eval", "--scenes", str(eval_scenes.path), "--policy", f"lerobot={random_act}", "--out", str(run),
                "--actors", "1", "--envs-per-actor", str(n), "--horizon", str(EPISODE_LENGTH),
                "--max-batch-size", str(n)]) == 0
    frame = ResultsStore(run).read().set_index("scene_id")
    assert sorted(frame.index) == order and not frame["skipped"].any()

    # Success, scene by scene (both deterministic); the solved scene makes the comparison non-vacuous.
    assert {sid: bool(frame.loc[sid, "success"]) for sid in order} == lerobot_success
    assert lerobot_success[eval_scenes.solved_id]
    # The first action, scene by scene.
    for sid in order:
        gauntlet_action = np.array(json.loads(frame.loc[sid, "first_action"]))
        assert gauntlet_action.shape == (7,)
        np.testing.assert_allclose(gauntlet_action, lerobot_first[sid], rtol=0, atol=ACTION_ATOL, err_msg=sid)
    # The policy reads the observation: different scenes, different first actions (by far more than
    # the tolerance), so a wrongly mapped observation would show above.
    actions = np.array([lerobot_first[sid] for sid in order])  # (n, 7)
    gaps = np.abs(actions[:, None] - actions[None]).max(axis=-1)  # (n, n): largest component difference
    assert gaps[np.triu_indices(n, 1)].min() > 100 * ACTION_ATOL, actions
