"""BC-RNN with real torch on CPU and real robosuite: shapes, per-episode hidden state, pickle-free
checkpoints, behaviour cloning on scripted-expert demos of lift D0 (collected by `data collect`,
trained by `gauntlet train`'s path on the test Ray), and a closed-loop rollout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # 2 shared cores: intra-op threads only contend

from gauntlet.keys import (  # noqa: E402
    ACTION_FEATURE,
    EPISODE_CALLS_KEY,
    EPISODE_ID_KEY,
    OBJECT_STATE_FEATURE,
    OBJECT_STATE_KEY,
    PROMPT_KEY,
    STATE_KEY,
)
from gauntlet.policies.base import Policy, PolicyMetadata, stack_observations  # noqa: E402
from gauntlet.policies.bc_rnn import BCRNNConfig, config_for_task  # noqa: E402
from gauntlet.policies.bc_rnn.policy import BCRNNPolicy  # noqa: E402
from gauntlet.policies.checkpoints import (  # noqa: E402
    CONFIG_FILE,
    PARAMS_FILE,
    CheckpointFormatError,
    CheckpointMismatchError,
)
from gauntlet.policies.validation import ObservationError  # noqa: E402

SMALL = {"hidden_size": 64, "mlp_hidden": 64}  # trains in a couple of seconds on one core
HELD_OUT_SEEDS = (100, 101)  # demos use seeds 0..4; rollouts start from scenes never trained on


def random_batch(b: int, seed: int = 0, object_dim: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        STATE_KEY: rng.normal(size=(b, 8)).astype(np.float32),
        OBJECT_STATE_KEY: rng.normal(size=(b, object_dim)).astype(np.float32),
        PROMPT_KEY: np.array(["pick up the red cube"] * b),
    }


def rows(batch: dict[str, np.ndarray], idx: list[int]) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in batch.items()}


@pytest.fixture()
def untrained() -> BCRNNPolicy:
    return BCRNNPolicy.create(task="lift", seed=3, **SMALL)


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 scripted-expert demos of lift D0 with the object state (seeds 0..), and their statistics."""
    from gauntlet.data.collect import CollectConfig, collect_demos
    from gauntlet.data.stats import StatsConfig, write_stats

    path = tmp_path_factory.mktemp("bc_rnn_demos") / "lift_d0"
    collect_demos(CollectConfig(out=str(path), task=("lift",), variant=("D0",), episodes=5, object_state=True,
                                horizon=300))
    write_stats(StatsConfig(dataset=str(path)), progress=False)
    return path


@pytest.fixture(scope="module")
def trained(ray_session, demos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[BCRNNPolicy, list[float]]:
    """A small BC-RNN (from a fresh base) trained 300 steps by `gauntlet train`'s path; its per-step losses."""
    from gauntlet.platform.train.driver import TrainConfig, run_train

    root = tmp_path_factory.mktemp("bc_rnn_train")
    base = BCRNNPolicy.create(config_for_task("lift", **SMALL), seed=0).save(root / "base")
    out = root / "trained"
    run_train(TrainConfig(dataset=str(demos), out=str(out), base=str(base), policy="bc_rnn", mode="full", steps=300,
                          batch_size=16, learning_rate=3e-3, weight_decay=0.0, checkpoint_every=300,
                          report_every=100, log_every=100, cpus_per_worker=0.5))
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    return BCRNNPolicy.load(out), [r["loss"] for r in rows]


# ------------------------------------------------------------------------------ contract


def test_infer_shapes_dtypes_and_metadata(untrained: BCRNNPolicy) -> None:
    assert isinstance(untrained, Policy)
    out = untrained.infer(random_batch(3))
    assert out["actions"].shape == (3, 8, 7) and out["actions"].dtype == np.float32
    assert np.all(np.abs(out["actions"]) <= 1.0)  # clipped to the env's action range
    assert untrained.infer(random_batch(0))["actions"].shape == (0, 8, 7)
    m = untrained.metadata
    assert (m.name, m.action_dim, m.chunk_len, m.privileged, m.needs_images) == ("bc_rnn", 7, 8, True, False)
    assert m.observation_spec[OBJECT_STATE_KEY].shape == (10,)
    assert json.dumps(m.to_dict())  # servable as JSON
    from gauntlet.policies.registry import make_policy

    square = make_policy("bc_rnn", task="square", **SMALL)  # object_state sized for the task
    assert square.metadata.observation_spec[OBJECT_STATE_KEY].shape == (10,)
    stack = make_policy("bc_rnn", task="stack", **SMALL)
    assert stack.infer(random_batch(1, object_dim=17))["actions"].shape == (1, 8, 7)
    state_only = BCRNNPolicy.create(obs_keys=(STATE_KEY,), obs_dims=(8,), **SMALL)
    assert not state_only.metadata.privileged
    assert state_only.infer({STATE_KEY: random_batch(2)[STATE_KEY]})["actions"].shape == (2, 8, 7)


def test_bad_inputs_are_rejected_naming_the_field(untrained: BCRNNPolicy) -> None:
    batch = random_batch(2)
    with pytest.raises(ObservationError, match=OBJECT_STATE_KEY):
        untrained.infer({STATE_KEY: batch[STATE_KEY]})
    with pytest.raises(ObservationError, match=OBJECT_STATE_KEY):
        untrained.infer({**batch, OBJECT_STATE_KEY: batch[OBJECT_STATE_KEY][:, :7]})
    nan = batch[STATE_KEY].copy()
    nan[0, 0] = np.nan
    with pytest.raises(ObservationError, match=STATE_KEY):
        untrained.infer({**batch, STATE_KEY: nan})
    with pytest.raises(ObservationError, match="more than once"):
        untrained.infer({**batch, EPISODE_ID_KEY: np.array(["a", "a"])})
    with pytest.raises(ValueError, match="seq_len"):
        BCRNNConfig(seq_len=12, chunk_len=8)


def test_torch_is_imported_only_when_a_policy_is_made() -> None:
    code = ("import sys, gauntlet.policies.registry, gauntlet.policies.bc_rnn as b; "
            "b.BCRNNConfig(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------ hidden state


def test_hidden_state_is_carried_per_episode_and_reset(untrained: BCRNNPolicy) -> None:
    batch = rows(random_batch(1, seed=1), [0])
    stateless = [untrained.infer(batch)["actions"] for _ in range(2)]
    np.testing.assert_array_equal(stateless[0], stateless[1])  # no episode_id: a zero state every call
    assert untrained.num_episodes == 0

    with_id = {**batch, EPISODE_ID_KEY: np.array(["ep"])}
    first, second, third = (untrained.infer(with_id)["actions"] for _ in range(3))
    np.testing.assert_allclose(first, stateless[0], atol=1e-6)  # a new episode starts from zeros
    assert np.abs(second - first).max() > 1e-3  # same observation, carried state -> other actions
    # seq_len 16 / chunk_len 8: the memory is two calls long, then it restarts from zeros.
    np.testing.assert_allclose(third, first, atol=1e-6)

    untrained.reset()
    assert untrained.num_episodes == 0
    np.testing.assert_allclose(untrained.infer(with_id)["actions"], first, atol=1e-6)


def test_interleaved_episodes_match_separate_runs() -> None:
    policy = BCRNNPolicy.create(task="lift", seed=5, seq_len=32, **SMALL)  # 4 calls of memory
    obs_a, obs_b = random_batch(4, seed=10), random_batch(4, seed=11)  # 4 calls per episode
    alone_a = [policy.infer({**rows(obs_a, [t]), EPISODE_ID_KEY: np.array(["a"])})["actions"][0] for t in range(4)]
    policy.reset()
    alone_b = [policy.infer({**rows(obs_b, [t]), EPISODE_ID_KEY: np.array(["b"])})["actions"][0] for t in range(4)]
    policy.reset()
    for t in range(4):
        # Both episodes in one batch, their order swapped every call, plus a stateless row.
        order = [("a", obs_a), ("b", obs_b)] if t % 2 == 0 else [("b", obs_b), ("a", obs_a)]
        parts = [rows(obs, [t]) for _, obs in order] + [rows(obs_a, [t])]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        batch[EPISODE_ID_KEY] = np.array([order[0][0], order[1][0], ""])
        actions = policy.infer(batch)["actions"]
        got = {order[0][0]: actions[0], order[1][0]: actions[1]}
        np.testing.assert_allclose(got["a"], alone_a[t], atol=1e-5)
        np.testing.assert_allclose(got["b"], alone_b[t], atol=1e-5)
    assert np.abs(alone_a[1] - policy.infer(rows(obs_a, [1]))["actions"][0]).max() > 1e-3  # state mattered
    assert policy.num_episodes == 2


def test_episode_memory_is_a_bounded_lru() -> None:
    policy = BCRNNPolicy.create(task="lift", seed=5, max_episodes=2, **SMALL)
    batch = rows(random_batch(1, seed=2), [0])
    fresh = policy.infer(batch)["actions"]
    for eid in ("x", "y", "z"):  # "x" is the least recently used when "z" arrives
        policy.infer({**batch, EPISODE_ID_KEY: np.array([eid])})
    assert policy.num_episodes == 2
    np.testing.assert_allclose(policy.infer({**batch, EPISODE_ID_KEY: np.array(["x"])})["actions"], fresh, atol=1e-6)
    assert np.abs(policy.infer({**batch, EPISODE_ID_KEY: np.array(["z"])})["actions"] - fresh).max() > 1e-3
    policy.end_episode("z")
    assert policy.num_episodes == 1


def test_answers_count_the_calls_of_each_episode_the_memory_holds() -> None:
    """`episode_calls` is what a client compares with its own count: it runs on across the memory's
    periodic zeroing, and starts at 1 again once the memory of the episode is gone (evicted here)."""
    policy = BCRNNPolicy.create(task="lift", seed=5, max_episodes=2, **SMALL)  # memory: 2 calls
    assert policy.metadata.episode_memory and PolicyMetadata.from_dict(policy.metadata.to_dict()).episode_memory
    batch = random_batch(3, seed=4)
    counts = [policy.infer({**batch, EPISODE_ID_KEY: np.array(["a", "", "b"])})[EPISODE_CALLS_KEY].tolist()
              for _ in range(3)]
    assert counts == [[1, 0, 1], [2, 0, 2], [3, 0, 3]]  # the third call is past the memory's zeroing
    assert policy.infer(rows(batch, [0]))[EPISODE_CALLS_KEY].tolist() == [0]  # no id: stateless
    one = rows(batch, [0])
    for eid in ("c", "d"):  # "a" and "b" are evicted (max_episodes 2)
        policy.infer({**one, EPISODE_ID_KEY: np.array([eid])})
    assert policy.infer({**one, EPISODE_ID_KEY: np.array(["a"])})[EPISODE_CALLS_KEY].tolist() == [1]
    assert policy.infer(random_batch(0))[EPISODE_CALLS_KEY].shape == (0,)


# ------------------------------------------------------------------------------ checkpoints


def test_save_load_round_trip_and_corrupt_checkpoints(trained, tmp_path: Path) -> None:
    from gauntlet.policies.registry import make_policy

    policy, _ = trained
    ckpt = policy.save(tmp_path / "ckpt")
    with np.load(ckpt / PARAMS_FILE, allow_pickle=False) as npz:  # plain arrays, no pickle anywhere
        assert all(npz[k].dtype == np.float32 for k in npz.files)
    loaded = make_policy("bc_rnn", str(ckpt))
    assert isinstance(loaded, BCRNNPolicy) and loaded.norm_stats.allclose(policy.norm_stats)
    assert loaded.fingerprint == policy.fingerprint
    batch = random_batch(3, seed=4)
    for t in range(3):  # stateful calls too: the hidden state path must match exactly
        step = {**batch, EPISODE_ID_KEY: np.array(["p", "q", "r"]), STATE_KEY: batch[STATE_KEY] + t}
        np.testing.assert_array_equal(loaded.infer(step)["actions"], policy.infer(step)["actions"])
    policy.reset()

    def broken(name: str, edit) -> Path:
        import shutil

        path = tmp_path / name
        shutil.copytree(ckpt, path)
        edit(path)
        return path

    def flip_byte(path: Path) -> None:
        data = bytearray((path / PARAMS_FILE).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (path / PARAMS_FILE).write_bytes(bytes(data))

    def edit_config(**changes):
        def edit(path: Path) -> None:
            manifest = json.loads((path / CONFIG_FILE).read_text())
            manifest["model_config"].update(changes)
            (path / CONFIG_FILE).write_text(json.dumps(manifest))
        return edit

    with pytest.raises(CheckpointFormatError, match=PARAMS_FILE):
        BCRNNPolicy.load(broken("flipped", flip_byte))
    with pytest.raises(CheckpointMismatchError, match=PARAMS_FILE):  # shapes no longer fit
        BCRNNPolicy.load(broken("wider", edit_config(hidden_size=96)))
    with pytest.raises(CheckpointFormatError, match=f"{CONFIG_FILE}.*fingerprint"):  # same shapes, other function
        BCRNNPolicy.load(broken("seq", edit_config(seq_len=32)))
    with pytest.raises(CheckpointMismatchError, match=CONFIG_FILE):
        BCRNNPolicy.load(broken("unknown", edit_config(depth=3)))
    with pytest.raises(CheckpointFormatError, match="norm_stats.json"):
        BCRNNPolicy.load(broken("stats", lambda p: (p / "norm_stats.json").write_text("{")))


# ------------------------------------------------------------------------------ learning


def test_training_on_expert_demos_reduces_the_loss(demos, trained) -> None:
    from gauntlet.data.dataset_format import Dataset

    ds = Dataset(demos)
    assert ds.num_episodes == 5 and ds.episodes["success"].all()
    assert ds.load_columns([OBJECT_STATE_FEATURE])[OBJECT_STATE_FEATURE].shape == (ds.num_frames, 10)
    policy, losses = trained
    assert policy.config.obs_keys == (STATE_KEY, OBJECT_STATE_KEY) and policy.config.hidden_size == SMALL["hidden_size"]
    assert len(losses) == 300 and np.all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-20:])
    assert last < 0.2 * first, (first, last)
    # Statistics come from the demos (`data stats`), not the identity stats of an untrained policy.
    assert policy.has_data_stats and ds.load_norm_stats().allclose(policy.norm_stats)


def test_closed_loop_rollout_moves_the_gripper_to_the_cube(demos, trained) -> None:
    """From held-out scenes, two chunks of the trained policy bring the end effector much closer
    to the cube. A policy that ignores the state does not: zero actions stay put, and the demos'
    mean action (a constant drift down and forward) is far behind after the same 16 steps."""
    from gauntlet.envs.env import make_env

    policy, _ = trained
    from gauntlet.data.dataset_format import Dataset

    mean_action = Dataset(demos).load_columns([ACTION_FEATURE])[ACTION_FEATURE].mean(0)
    env = make_env("lift", "D0", cameras=())

    def cube_distance() -> float:
        return float(np.linalg.norm(env.eef_pos - env.object_pose("cube_main")[0]))

    def rollout(seed: int, act) -> tuple[float, float]:
        env.reset(seed)
        start = cube_distance()
        for _ in range(2):
            chunk = act(stack_observations([env.observe(images=False)]))  # (H, D)
            for action in chunk:
                env.step(action)
        return start, cube_distance()

    try:
        for seed in HELD_OUT_SEEDS:
            eid = np.array([f"lift/{seed}"])
            start, learnt = rollout(seed, lambda b, eid=eid: policy.infer({**b, EPISODE_ID_KEY: eid})["actions"][0])
            _, drift = rollout(seed, lambda _b: np.tile(mean_action, (8, 1)))
            _, still = rollout(seed, lambda _b: np.zeros((8, 7)))
            assert learnt < 0.5 * start, (seed, start, learnt)
            assert learnt < drift - 0.03, (seed, learnt, drift)
            assert still > 0.9 * start  # the env does not move the arm by itself
    finally:
        env.close()
        policy.reset()
