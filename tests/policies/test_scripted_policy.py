"""The scripted oracle solves every task through the Policy interface, over the wire format."""

from __future__ import annotations

import numpy as np
import pytest

from gauntlet.envs.env import make_env
from gauntlet.keys import EPISODE_CALLS_KEY
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.base import stack_observations
from gauntlet.policies.registry import make_policy
from gauntlet.policies.validation import ObservationError, validate_observation


@pytest.fixture(scope="module")
def oracle():
    return make_policy("scripted", chunk_len=8)


def _request(env, episode: str) -> dict:
    obs = env.observe(images=False)
    obs["observation/sim_state"] = env.get_state()
    obs["episode_id"] = episode
    return msgpack_numpy.unpackb(msgpack_numpy.packb(obs))  # exactly what crosses the network


@pytest.mark.parametrize("task", ["lift", "stack", "square", "pick_place_can"])
def test_oracle_solves_task_through_infer(oracle, task: str) -> None:
    env = make_env(task, "D1", image_size=16)
    env.reset(5)
    spec = oracle.metadata.observation_spec
    for _ in range(60):
        chunk = oracle.infer(stack_observations([validate_observation(_request(env, task), spec)]))["actions"]
        assert chunk.shape == (1, 8, 7) and chunk.dtype == np.float32
        if any(env.step(a) for a in chunk[0]):
            return
    pytest.fail(f"the oracle did not solve {task} within 480 steps")


def test_batched_requests_match_single_ones(oracle) -> None:
    envs = [make_env("lift", "D0", image_size=16) for _ in range(2)]
    for seed, env in enumerate(envs):
        env.reset(seed)
    spec = oracle.metadata.observation_spec
    reqs = [validate_observation(_request(env, ""), spec) for env in envs]
    together = oracle.infer(stack_observations(reqs))["actions"]
    alone = np.concatenate([oracle.infer(stack_observations([r]))["actions"] for r in reqs])
    np.testing.assert_array_equal(together, alone)


def test_answers_count_the_calls_of_each_episode(oracle) -> None:
    """The expert's memory is per episode id; each answer says how many calls of the episode it has
    seen, so a client notices a replica that never saw (or forgot) the episode."""
    assert oracle.metadata.episode_memory
    env = make_env("lift", "D0", image_size=16)
    env.reset(0)
    spec = oracle.metadata.observation_spec
    counts = [oracle.infer(stack_observations([validate_observation(_request(env, e), spec)
                                               for e in ("count-a", "", "count-b")]))[EPISODE_CALLS_KEY].tolist()
              for _ in range(2)]
    assert counts == [[1, 0, 1], [2, 0, 2]]
    oracle.reset()  # forgets every expert: the next call of an episode is its first again
    request = stack_observations([validate_observation(_request(env, "count-a"), spec)])
    assert oracle.infer(request)[EPISODE_CALLS_KEY].tolist() == [1]


def test_bad_sim_state_is_rejected_with_the_field(oracle) -> None:
    env = make_env("lift", "D0", image_size=16)
    env.reset(0)
    obs = _request(env, "")
    obs["observation/sim_state"]["mj_state"] = np.full(3, np.nan)
    with pytest.raises(ObservationError, match="observation/sim_state/mj_state: contains NaN"):
        validate_observation(obs, oracle.metadata.observation_spec)
    obs["observation/sim_state"] = [1, 2, 3]
    with pytest.raises(ObservationError, match="observation/sim_state"):
        validate_observation(obs, oracle.metadata.observation_spec)
