"""`gauntlet data collect`: real scripted-expert episodes on real robosuite envs.

Checks that what is recorded is what the eval path would send a policy (state and, with cameras,
the resized images), that the recorded actions replay the episode, and that the dataset feeds
`data stats` and the loader end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gauntlet.data.collect import CollectConfig, collect_demos
from gauntlet.data.dataset_schema import DatasetError
from gauntlet.data.dataset_validation import validate
from gauntlet.data.loader import make_loader
from gauntlet.envs.env import make_env
from gauntlet.platform.cli import main as cli
from gauntlet.platform.eval.episode import filter_obs


@pytest.fixture(scope="module")
def lift(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collect") / "lift"
    rc = cli(["data", "collect", "--task", "lift", "--variant", "D0", "--episodes", "2", "--out", str(out),
              "--seed", "5", "--horizon", "200"])
    assert rc == 0
    return out


def test_states_actions_and_sim_states_replay_the_episode(lift: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = validate(lift, expected_action_dim=7, expected_state_dim=8, split="train")
    assert ds.num_episodes == 2 and ds.cameras == []
    eps = ds.episodes
    assert eps["success"].tolist() == [True, True] and eps["seed"].tolist() == [5, 6]
    assert eps["prompt"].tolist() == ["pick up the red cube"] * 2
    assert ds.info["source"]["kind"] == "collect" and ds.info["envs"]["lift/D0"]["env_name"] == "Lift"
    controller = ds.info["envs"]["lift/D0"]["env_args"]["env_kwargs"]["controller_configs"]
    assert controller["body_parts"]["right"]["type"] == "OSC_POSE"
    env = make_env("lift", "D0", image_size=128)
    try:
        assert eps["fingerprint"].tolist() == [env.fingerprint] * 2
        for ep in range(2):
            got = ds.episode(ep, sim=True)
            states, actions = got["observation.state"], got["action"]
            assert np.all(np.abs(actions) <= 1.0)
            # Replaying the recorded actions from the recorded seed reproduces every recorded state bit for bit,
            # each equal to the observation the eval path sends (env.observe()["observation/state"]).
            env.reset(int(eps["seed"][ep]))
            assert got["model_xml"] == env.sim.model.get_xml()
            assert got["init/mj_state"].shape == env.get_state()["mj_state"].shape
            success = False
            for t in range(len(states)):
                np.testing.assert_array_equal(states[t], env.observe(images=False)["observation/state"])
                np.testing.assert_array_equal(got["sim_states"][t], env.sim.get_state().flatten())
                success = env.step(actions[t])
            assert success  # the last recorded action solved the task
    finally:
        env.close()
    # The dataset feeds the rest of the pipeline.
    assert cli(["data", "stats", str(lift)]) == 0
    assert ds.load_norm_stats()["observation/state"].dim == 8
    with make_loader(lift, batch_size=8, chunk_len=5) as loader:
        batch = next(iter(loader))
    assert batch["actions"].shape == (8, 5, 7) and set(batch["prompt"]) == {"pick up the red cube"}


def test_cameras_record_what_the_eval_path_sends(tmp_path: Path) -> None:
    cfg = CollectConfig(out=str(tmp_path / "cams"), task="lift", variant="D0", episodes=1, cameras=True,
                        image_size=32, render_size=48, seed=2, horizon=200, valid_fraction=0.0)
    ds = validate(collect_demos(cfg))
    assert ds.cameras == ["agentview", "wrist"] and ds.image_shape("wrist") == (32, 32, 3)
    got = ds.episode(0)
    n = ds.num_frames
    assert got["observation.images.agentview"].shape == (n, 32, 32, 3)
    # Frame 0 through the eval path: observe() at the scene's render size, filter_obs() to the policy's size.
    env = make_env("lift", "D0", image_size=48)
    try:
        env.reset(2)
        obs = env.observe(images=True)
        shapes = {"observation/image": (32, 32, 3), "observation/wrist_image": (32, 32, 3)}
        sent = filter_obs(obs, frozenset(shapes) | {"observation/state"}, shapes)
    finally:
        env.close()
    np.testing.assert_array_equal(got["observation.images.agentview"][0], sent["observation/image"])
    np.testing.assert_array_equal(got["observation.images.wrist"][0], sent["observation/wrist_image"])
    assert got["observation.images.agentview"].std() > 1.0  # a real rendering, not a blank frame
    with make_loader(ds, batch_size=4, chunk_len=3, image_size=16) as loader:
        batch = next(iter(loader))
    assert batch["observation/image"].shape == (4, 16, 16, 3)


def test_failures_are_dropped_unless_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 5 steps are too few to lift the cube: every attempt fails.
    args = ["data", "collect", "--task", "lift", "--episodes", "1", "--horizon", "5", "--max-attempts", "2"]
    assert cli([*args, "--out", str(tmp_path / "none")]) == 1
    assert "only 0 of 1 episodes kept after 2 attempts" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    assert cli([*args, "--out", str(tmp_path / "kept"), "--keep-failures"]) == 0
    ds = validate(tmp_path / "kept")
    assert ds.episodes["success"].tolist() == [False] and ds.num_frames == 5
    with pytest.raises(ValueError, match="unknown task"):
        CollectConfig(out="x", task="lift,nope")
    with pytest.raises(DatasetError, match="already exists"):
        collect_demos(CollectConfig(out=str(tmp_path / "kept"), episodes=1, horizon=5, keep_failures=True))
