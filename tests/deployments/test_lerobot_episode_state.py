"""Stateful LeRobot policies on a batched replica act as LeRobot's own `select_action` loop, per episode.

Diffusion with `n_obs_steps` 2 (an observation history, a chunk every `n_action_steps` steps) and ACT
with temporal ensembling (a chunk every step, averaged with the earlier ones) are served by Gauntlet
with episode ids; real robosuite Lift episodes run closed loop on the served actions, several of them
interleaved in the same batches, and LeRobot's `select_action` loop (one fresh policy instance per
episode, in a Ray task of the LeRobot environment) replays each episode's recorded observations: the
actions must be the same. An evicted episode is reported to Eval's client, and `gauntlet eval` runs a
stateful checkpoint end to end with one request per env step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gauntlet.deployments.app import APP_NAME, PolicyServing, build_app, deployment_name, start_serve
from gauntlet.keys import ACTIONS_KEY, EPISODE_CALLS_KEY, EPISODE_ID_KEY
from gauntlet.platform.eval.episode import EpisodeMemoryLost, filter_obs
from gauntlet.platform.eval.sources import EpisodeCalls
from gauntlet.policies.base import PolicyMetadata
from gauntlet.policies.registry import PolicyRef, runtime_env_for

pytestmark = pytest.mark.slow

IMAGE = 32  # px: the policies' cameras, rendered at this size (no resize)
ACT_APP = "lerobot-act-ensemble"
ACT_MAX_EPISODES = 2  # small, so that a third episode evicts one
# ACT with temporal ensembling (LeRobot requires n_action_steps 1 with it); the other sizes are
# untrained_checkpoints.SMALL_OVERRIDES'. Diffusion's small config already has n_obs_steps 2, horizon 8,
# n_action_steps 4.
ACT_ENSEMBLE = {"temporal_ensemble_coeff": 0.01, "n_action_steps": 1}


@pytest.fixture(scope="module")
def pretrained(ray_session, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import ray

    from gauntlet.policies.lerobot.untrained_checkpoints import save_random_policy

    save = ray.remote(num_cpus=0.5, max_retries=0, runtime_env=runtime_env_for("lerobot"))(save_random_policy)
    root = tmp_path_factory.mktemp("lerobot_state")
    refs = {"diffusion": save.remote("diffusion", str(root / "diffusion"), image_size=IMAGE),
            "act": save.remote("act", str(root / "act"), image_size=IMAGE, **ACT_ENSEMBLE)}
    return {kind: ray.get(ref, timeout=1800) for kind, ref in refs.items()}


@pytest.fixture(scope="module")
def served(pretrained: dict[str, str], free_ports):
    from ray import serve

    serve.shutdown()  # other modules' Serve instances listen on other ports
    env = runtime_env_for("lerobot")
    diffusion = PolicyServing(PolicyRef("lerobot", pretrained["diffusion"]), max_batch_size=8,
                              batch_wait_timeout_s=0.05, num_cpus=0.5, runtime_env=env)
    start_serve([diffusion], http_port=free_ports(1)[0], grpc_port=None)
    act = PolicyServing(PolicyRef("lerobot", pretrained["act"]), max_batch_size=8, batch_wait_timeout_s=0.05,
                        num_cpus=0.5, runtime_env=env, policy_kwargs={"max_episodes": ACT_MAX_EPISODES})
    serve.run(build_app([act]), name=ACT_APP, route_prefix="/act")
    yield {"diffusion": serve.get_deployment_handle(deployment_name("lerobot"), app_name=APP_NAME),
           "act": serve.get_deployment_handle(deployment_name("lerobot"), app_name=ACT_APP)}
    serve.shutdown()


def _run_interleaved(handle, starts: list[int], steps: int, tag: str) -> dict[str, list]:
    """Lift episodes (seeds 0, 1, ...) closed loop on the served policy, episode i starting at round
    starts[i]; each round's requests go as one `infer_many` call, so they share a batch. Returns per
    episode the observations sent (without the id), the actions and the episode_calls answered."""
    from gauntlet.envs.env import make_env

    meta = PolicyMetadata.from_dict(handle.metadata.remote().result())
    image_shapes = {k: v.shape for k, v in meta.observation_spec.items() if v.is_image}
    envs = [make_env("lift", image_size=IMAGE) for _ in starts]
    out: dict[str, list] = {"obs": [[] for _ in starts], "actions": [[] for _ in starts], "calls": [[] for _ in starts]}
    try:
        for seed, env in enumerate(envs):
            env.reset(seed)
        for t in range(max(starts) + steps):
            active = [i for i, start in enumerate(starts) if start <= t < start + steps]
            sent = [filter_obs(envs[i].observe(images=True), frozenset(meta.observation_spec), image_shapes)
                    for i in active]
            requests = [{**obs, EPISODE_ID_KEY: f"{tag}-{i}"} for i, obs in zip(active, sent, strict=True)]
            answers = handle.infer_many.remote(requests).result()
            for i, obs, answer in zip(active, sent, answers, strict=True):
                assert ACTIONS_KEY in answer, answer
                out["obs"][i].append(obs)
                out["actions"][i].append(answer[ACTIONS_KEY][0])  # (1, D): one action per step
                out["calls"][i].append(answer[EPISODE_CALLS_KEY])
                envs[i].step(answer[ACTIONS_KEY][0])
    finally:
        for env in envs:
            env.close()
    return out


@pytest.mark.parametrize(("kind", "starts", "steps"), [
    # Diffusion: episodes 0 and 1 need chunks together (one batched call of 2), episode 2 starts two
    # steps later, so its chunk calls fall in rounds where the others only pop their queues.
    ("diffusion", [0, 0, 2], 10),
    # ACT: a chunk for both episodes every step; 12 steps run past chunk_size 10, where the ensemble
    # of each action is full.
    ("act", [0, 1], 12),
])
def test_interleaved_episodes_match_lerobots_select_action_loop(served, pretrained, kind: str, starts: list[int],
                                                                steps: int) -> None:
    import ray

    from gauntlet.policies.lerobot.reference_loop import select_action_loop

    meta = served[kind].metadata.remote().result()
    assert (meta["chunk_len"], meta["episode_memory"]) == (1, True)
    run = _run_interleaved(served[kind], starts, steps, tag=f"{kind}-match")
    assert run["calls"] == [list(range(1, steps + 1))] * len(starts)
    loop = ray.remote(num_cpus=0.5, max_retries=0, runtime_env=runtime_env_for("lerobot"))(select_action_loop)
    reference = ray.get(loop.remote(pretrained[kind], run["obs"]), timeout=600)
    for i, expected in enumerate(reference):
        np.testing.assert_allclose(np.stack(run["actions"][i]), expected, rtol=1e-4, atol=1e-4,
                                   err_msg=f"{kind} episode {i}")
    # The episodes saw different scenes: a state that leaked from one to another could not match.
    assert np.abs(reference[0] - reference[1]).max() > 1e-3


def test_an_evicted_episode_is_reported_to_the_eval_client(served) -> None:
    """ACT keeps ACT_MAX_EPISODES (2) episodes: a third evicts the least recently asked, whose next
    answer counts 1 call; Eval's client sees that as a lost memory (it restarts the episode)."""
    from gauntlet.envs.env import make_env

    handle = served["act"]
    env = make_env("lift", image_size=IMAGE)
    try:
        env.reset(0)
        obs = filter_obs(env.observe(images=True), frozenset(handle.metadata.remote().result()["observation_spec"]))
    finally:
        env.close()
    client = EpisodeCalls()

    def ask(episode: str) -> None:
        request = {**obs, EPISODE_ID_KEY: episode}
        client.check(request, handle.infer_many.remote([request]).result()[0])

    for episode in ("evict-a", "evict-a", "evict-b", "evict-c"):  # "evict-c" pushes out "evict-a"
        ask(episode)
    ask("evict-b")  # still held: its second call
    with pytest.raises(EpisodeMemoryLost, match="evict-a"):
        ask("evict-a")


def test_gauntlet_eval_runs_a_stateful_checkpoint_end_to_end(served, pretrained, tmp_path: Path) -> None:
    import pandas as pd
    from ray import serve

    from gauntlet.platform.cli import main as cli
    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval
    from gauntlet.runtime.config_args import parse_config

    serve.delete(ACT_APP)  # frees its CPU for the rollout actor
    scenes = tmp_path / "scenes"
    assert cli(["scenes", "generate", "--out", str(scenes), "--tasks", "lift", "--variants", "D0",
                "--error-types", "object_push", "--workers", "1", "--no-validate"]) == 0
    run = tmp_path / "run"
    cfg = parse_config(EvalConfig, ["--scenes", str(scenes), "--policy", f"lerobot={pretrained['diffusion']}",
                                    "--out", str(run), "--actors", "1", "--horizon", "12", "--max-batch-size", "4"],
                       "gauntlet eval", "")
    summary = run_eval(cfg)
    frame = pd.read_parquet(run / "results.parquet")
    assert summary["problems"] == [] and len(frame) == summary["total"] > 0
    assert not frame["skipped"].any() and (frame["episode_restarts"] == 0).all()
    # One request per env step: the replica's history took every observation of the episode.
    assert (frame["inference_calls"] == frame["steps"]).all() and (frame["steps"] > 0).all()
