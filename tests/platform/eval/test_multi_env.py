"""Several envs per rollout actor (`--envs-per-actor K`) and policies that run inside the actors.

Real local Ray, real robosuite envs, real Serve. The fault tests (driver killed then resumed, actor
killed) run with K > 1 in test_eval.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from gauntlet.platform.eval.config import EvalConfig
from gauntlet.platform.eval.driver import run_eval
from gauntlet.platform.eval.results import KEY
from gauntlet.platform.eval.targets import policy_targets

# What an episode did; wall time, worker and latencies depend on the schedule, these must not.
OUTCOME = ["success", "skipped", "steps", "recovery_step", "inference_calls", "replan_steps"]


@pytest.fixture(scope="module")
def scene_db(tmp_path_factory: pytest.TempPathFactory, generate_scenes) -> Path:
    return generate_scenes(tmp_path_factory.mktemp("multi_env") / "scenes", variants="D0,D1",
                           error_types="object_pose_perturb,object_push,drop")


def _outcomes(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_parquet(run_dir / "results.parquet")
    assert not frame.duplicated(subset=list(KEY)).any()
    return frame.set_index(["scene_id", "policy", "trial"]).sort_index()[OUTCOME]


def test_envs_per_actor_is_checked_and_not_part_of_the_resume_identity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="envs_per_actor must be >= 1"):
        EvalConfig(scenes="s", policy=("random",), out=str(tmp_path / "r"), envs_per_actor=0)
    with pytest.raises(ValueError, match="actor_gpus must be >= 0"):
        EvalConfig(scenes="s", policy=("random",), out=str(tmp_path / "r"), actor_gpus=-0.5)
    one, four = (EvalConfig(scenes="s", policy=("random",), out=str(tmp_path / "r"), envs_per_actor=k) for k in (1, 4))
    assert one.identity() == four.identity()


def test_cheap_privileged_policies_run_in_the_actors_unless_deployed(tmp_path: Path) -> None:
    cfg = EvalConfig(scenes="s", out=str(tmp_path / "r"),
                     policy=("scripted", "random", "deploy=bc_rnn", "vla"))
    targets, deploy = policy_targets(cfg)
    assert [(t.label, t.kind) for t in targets] == [("scripted", "local"), ("random", "local"),
                                                    ("bc_rnn", "serve"), ("vla", "serve")]
    assert [s.ref.name for s in deploy] == ["bc_rnn", "vla"]
    targets, deploy = policy_targets(EvalConfig(scenes="s", out=str(tmp_path / "r"), policy=("deploy=scripted",)))
    assert [(t.label, t.kind) for t in targets] == [("scripted", "serve")]  # same label as in-actor runs
    assert [s.ref.name for s in deploy] == ["scripted"]


def test_k_envs_per_actor_give_the_rows_of_one_env_per_actor(ray_session, scene_db: Path, tmp_path: Path) -> None:
    """The oracle in the actors, 12 episodes: one actor with one env, then one actor with four."""
    runs = {}
    for k in (1, 4):
        runs[k] = tmp_path / f"k{k}"
        summary = run_eval(EvalConfig(scenes=str(scene_db), policy=("scripted",), out=str(runs[k]), trials=2,
                                      actors=1, envs_per_actor=k, horizon=100, run_id="same"))
        assert summary["ran"] == 12 and summary["problems"] == []
        assert "serving" not in summary  # nothing deployed: the oracle ran in the actor
    one, four = _outcomes(runs[1]), _outcomes(runs[4])
    assert not one["skipped"].any() and one["success"].all()
    pd.testing.assert_frame_equal(one, four)


def test_k_envs_of_one_actor_reach_the_replica_together(ray_session, scene_db: Path, tmp_path: Path) -> None:
    """One actor x four envs, random deployed on Serve with no batch wait at all: the envs ask in
    rounds, so the replica sees their four requests as one batch, which one actor with one env can
    never send. A short ping timeout proves the actor answers its liveness pings while its envs step."""
    run = tmp_path / "run"
    summary = run_eval(EvalConfig(scenes=str(scene_db), policy=("deploy=random",), out=str(run), trials=2,
                                  actors=1, envs_per_actor=4, horizon=48, batch_wait_timeout_s=0.0,
                                  ping_timeout_s=6.0))
    stats = summary["serving"]["random"]
    assert stats["max_batch_size_seen"] == 4 and stats["mean_batch_size"] > 2.5, stats
    assert summary["actors_replaced"] == 0
    frame = pd.read_parquet(run / "results.parquet")
    assert len(frame) == 12 and not frame["skipped"].any(), frame["skip_reason"].tolist()
    assert (frame["inference_calls"] == 6).all() and (frame["latency_ms_mean"] > 0).all()
    assert stats["requests"]["ok"] == 72


def _first_scene(meta: pd.DataFrame, variant: str) -> dict:
    from gauntlet.platform.eval.scenes import scene_records

    return next(iter(scene_records(meta[meta["variant"] == variant].head(1)).values()))


def test_env_cache_pools_scenes_that_replay_alike_within_its_capacity(scene_db: Path) -> None:
    from gauntlet.envs.scene_db import SceneDB
    from gauntlet.platform.eval.env_cache import EnvCache

    meta = SceneDB.open(scene_db).metadata()
    d0, d1 = _first_scene(meta, "D0"), _first_scene(meta, "D1")
    assert d0["env_config"] != d1["env_config"] and d0["fingerprint"] == d1["fingerprint"]
    fp = d0["fingerprint"]
    cache = EnvCache(capacity=2)
    first, second = cache.acquire(d0["env_config"], fp), cache.acquire(d0["env_config"], fp)
    assert first is not second  # two episodes at once: two envs of one pool
    cache.release(first)
    cache.release(second)
    assert cache.acquire(d1["env_config"], fp) is second  # a D1 scene replays in a D0-built env
    cache.release(second)
    other = cache.acquire(d1["env_config"])  # no fingerprint: its own pool; at capacity, the LRU idle env goes
    assert cache.alive == 2 and cache.built == 3
    assert cache.acquire(d0["env_config"], fp) is second
    cache.release(other)
    assert cache.acquire(d1["env_config"]) is other


def test_a_scene_replays_alike_in_an_env_built_for_another_variant(scene_db: Path) -> None:
    """Sharing envs across variants changes nothing an episode does: the same D1 scene, run by the
    oracle in an env built for D0 and in one built for D1, ends in the same row and the same state."""
    import numpy as np

    from gauntlet.envs.scene_db import SceneDB
    from gauntlet.platform.eval.env_cache import EnvCache
    from gauntlet.platform.eval.episode import WorkItem, run_episode
    from gauntlet.platform.eval.sources import LocalSource

    db = SceneDB.open(scene_db)
    meta = db.metadata()
    d0, d1 = _first_scene(meta, "D0"), _first_scene(meta, "D1")
    outcomes, states = [], []
    for built_for in (d0, d1):
        cache = EnvCache()
        cache.release(cache.acquire(built_for["env_config"], built_for["fingerprint"]))
        item = WorkItem("r", d1["scene_id"], "scripted", 0, horizon=80)
        row = run_episode(db, cache, item, d1, LocalSource("scripted"), "w", "v")
        env = cache.acquire(d1["env_config"], d1["fingerprint"])
        assert cache.built == 1 and env.config.variant == built_for["variant"]
        outcomes.append({k: row[k] for k in OUTCOME})
        states.append(env.get_state())
        env.close()
    assert not outcomes[0]["skipped"] and outcomes[0]["steps"] > 0 and outcomes[0] == outcomes[1]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        np.testing.assert_array_equal(states[0][key], states[1][key], err_msg=key)
