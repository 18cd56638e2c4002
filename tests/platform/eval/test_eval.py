"""Distributed evaluation on a real local Ray + Serve: pre-flight skips, resume, dead actors, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from gauntlet.platform.eval.config import EvalConfig, EvalConfigError
from gauntlet.platform.eval.driver import run_eval
from gauntlet.platform.eval.results import KEY, ResultsStore
from gauntlet.platform.eval.status import EvalStatus
from gauntlet.runtime.config_args import parse_config


@pytest.fixture(scope="module")
def scene_db(tmp_path_factory: pytest.TempPathFactory, generate_scenes) -> Path:
    return generate_scenes(tmp_path_factory.mktemp("eval") / "scenes", variants="D0,D1",
                           error_types="object_pose_perturb,object_push,drop")


def _cfg(**kw) -> EvalConfig:
    argv = []
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return parse_config(EvalConfig, argv, "gauntlet eval", "")


def _keys_exactly_once(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_parquet(run_dir / "results.parquet")
    assert not frame.duplicated(subset=list(KEY)).any()
    return frame


def test_mismatched_scenes_are_skipped_and_counted(ray_session, scene_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "scenes"
    shutil.copytree(scene_db, db)
    meta = pd.read_parquet(db / "scenes.parquet")
    bad = meta["scene_id"].iloc[:2].tolist()
    meta.loc[meta["scene_id"].isin(bad), "fingerprint"] = "f" * 64
    meta.to_parquet(db / "scenes.parquet")
    run = tmp_path / "run"
    summary = run_eval(_cfg(scenes=db, policy=["scripted", "random"], out=run, actors=2, horizon=120))
    frame = _keys_exactly_once(run)
    assert len(frame) == len(meta) * 2 == summary["total"]
    skipped = frame[frame["skipped"]]
    assert set(skipped["scene_id"]) == set(bad) and len(skipped) == 4
    assert skipped["skip_reason"].str.contains("fingerprint mismatch").all()
    assert frame["success"].dtype == bool and frame["skipped"].dtype == bool  # booleans, never strings
    ran = frame[~frame["skipped"]]
    assert ran.loc[ran["policy"] == "scripted", "success"].mean() > ran.loc[ran["policy"] == "random", "success"].mean()
    assert (ran["inference_calls"] > 0).all()
    status = EvalStatus.read(run)
    assert status.state == "finished" and status.done == status.total == len(frame)
    # Partial skips are counted per policy and reason, and are not a problem (exit status 0).
    assert summary["problems"] == [] and status.problems == []
    assert status.policies["random"]["skip_reasons"] == {"fingerprint mismatch": 2}
    assert status.policies["scripted"]["ran"] == len(meta) - 2


@pytest.mark.parametrize("envs_per_actor", [1, 4])
def test_driver_killed_mid_run_then_resumed_holds_every_key_once(ray_session, scene_db: Path, tmp_path: Path,
                                                                 envs_per_actor: int) -> None:
    run = tmp_path / "run"
    # Random runs in the actors (no round trips): episodes long enough that the kill lands mid-run.
    args = [sys.executable, "-m", "gauntlet.platform.eval", "--scenes", str(scene_db), "--policy", "random",
            "--out", str(run), "--trials", "3", "--actors", "2", "--horizon", "100", "--write-every", "1",
            "--envs-per-actor", str(envs_per_actor)]
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        parts = list((run / "results").glob("part-*.parquet")) if (run / "results").exists() else []
        if len(parts) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    partial = ResultsStore(run).read()
    total = 6 * 3
    assert 0 < len(partial) < total, "the kill should land mid-run"
    # Resuming with a different configuration is refused before any work.
    with pytest.raises(EvalConfigError, match="different configuration"):
        run_eval(_cfg(scenes=scene_db, policy=["random"], out=run, trials=2, actors=2, horizon=100, resume=True))
    with pytest.raises(EvalConfigError, match="--resume"):
        run_eval(_cfg(scenes=scene_db, policy=["random"], out=run, trials=3, actors=2, horizon=100))
    # Envs per actor are not part of the run's identity: a run resumes with any number.
    summary = run_eval(_cfg(scenes=scene_db, policy=["random"], out=run, trials=3, actors=2, horizon=100, resume=True,
                            envs_per_actor=5 - envs_per_actor))
    frame = _keys_exactly_once(run)
    assert len(frame) == total and summary["ran"] == total - len(partial)
    before = partial.set_index(list(KEY)).sort_index()
    after = frame.set_index(list(KEY)).loc[before.index].sort_index()
    pd.testing.assert_series_equal(before["steps"], after["steps"])  # finished episodes were not rerun


def test_actors_no_node_can_place_are_reported_not_waited_on_silently(ray_session, scene_db: Path,
                                                                      tmp_path: Path) -> None:
    """A typo'd --actor-resource leaves every actor pending in Ray with no error: the driver says so."""
    args = [sys.executable, "-u", "-m", "gauntlet.platform.eval", "--scenes", str(scene_db), "--policy", "random",
            "--out", str(tmp_path / "run"), "--actors", "2", "--actor-resource", "rollout_typo",
            "--ping-timeout-s", "2"]
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    notices: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # never blocks the test
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            notices = [line for line in list(lines) if "no rollout actor is working" in line]
            if len(notices) >= 2:
                break
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait(30)
    assert len(notices) == 2, "the driver should repeat the notice while nothing runs"
    assert "2 starting" in notices[0] and "rollout_typo 1" in notices[0]
    assert "rollout_typo 0 (0 free)" in notices[0]  # what the cluster has of it, so the typo shows
    assert not list((tmp_path / "run").glob("results/part-*.parquet"))


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _replica_pid(process_tag: str) -> Callable[[Path], int | None]:
    """The first of the test Ray's processes whose command line holds `process_tag`."""

    def find(run: Path) -> int | None:
        ours = psutil.Process().children(recursive=True)  # this test process's Ray only, never another cluster's
        return next((p.pid for p in ours if process_tag in " ".join(_cmdline(p))), None)

    return find


def _actor_that_ran_an_episode(run: Path) -> int | None:
    """The pid of a live rollout actor of this run that has written a row (its `worker` column is
    "<node id[:8]>/<actor id[:8]>"). One still being created holds no items, and its death may reach
    the driver only after the other actor has finished the run: it would test nothing."""
    import pyarrow.parquet as pq
    from ray._private import state

    parts = sorted((run / "results").glob("part-*.parquet")) if (run / "results").exists() else []
    ran = {w.split("/")[1] for part in parts for w in pq.read_table(part, columns=["worker"])["worker"].to_pylist()}
    return next((actor["Pid"] for actor in state.actors().values() if actor["ActorClassName"] == "RolloutActor"
                 and actor["State"] == "ALIVE" and actor["ActorID"][:8] in ran), None)


def _kill_mid_run(run: Path, find_pid: Callable[[Path], int | None],
                  timeout_s: float) -> tuple[threading.Thread, list[int]]:
    """SIGKILLs the process `find_pid(run)` names once two result parts exist (the run is mid-way);
    returns the thread and the killed pids."""
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not killed:
            done = len(list((run / "results").glob("part-*.parquet"))) if (run / "results").exists() else 0
            pid = find_pid(run) if done >= 2 else None
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread, killed


@pytest.mark.parametrize("envs_per_actor", [1, 4])
def test_a_killed_actor_is_replaced_and_its_items_rerun(ray_session, scene_db: Path, tmp_path: Path,
                                                        envs_per_actor: int) -> None:
    run = tmp_path / "run"
    thread, killed = _kill_mid_run(run, _actor_that_ran_an_episode, timeout_s=120)
    # With several envs per actor, every episode the killed actor had in flight goes back to the queue.
    summary = run_eval(_cfg(scenes=scene_db, policy=["random"], out=run, trials=3, actors=2, horizon=100,
                            write_every=1, envs_per_actor=envs_per_actor))
    thread.join(5)
    assert killed, "an actor should have been killed mid-run"
    assert summary["actors_replaced"] >= 1
    frame = _keys_exactly_once(run)
    assert len(frame) == 18 and not frame["skipped"].any()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"scenes": "/nonexistent/db"}, "does not exist"),
        ({"tasks": "juggle"}, "select no scenes"),
        ({"policy": ["gpt5"]}, "unknown policy 'gpt5'"),
        ({"policy": ["vla=/no/such/ckpt"]}, "does not exist"),
        ({"policy": ["remote=ftp://x"]}, "ws:// or http://"),
    ],
)
def test_bad_input_is_refused_before_any_work(scene_db: Path, tmp_path: Path, kwargs: dict, needle: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from gauntlet.platform.eval.driver import main

    base = {"scenes": str(scene_db), "policy": ["random"], "out": str(tmp_path / "run")}
    base.update(kwargs)
    argv = []
    for key, value in base.items():
        for v in value if isinstance(value, list) else [value]:
            argv += ["--" + key, str(v)]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "run" / "results").exists()


def test_image_policy_renders_several_tasks_on_one_actor(ray_session, tmp_path: Path) -> None:
    """One actor, envs of two tasks, camera images for the VLA: every render on the actor's one GL thread."""
    from gauntlet.platform.cli import main as cli

    db = tmp_path / "scenes"
    assert cli(["scenes", "generate", "--out", str(db), "--tasks", "lift,stack", "--variants", "D0",
                "--error-types", "object_pose_perturb,object_push", "--workers", "2", "--no-validate"]) == 0
    run = tmp_path / "run"
    summary = run_eval(_cfg(scenes=db, policy=["vla"], out=run, trials=2, actors=1, horizon=16))
    frame = _keys_exactly_once(run)
    assert len(frame) == 8 and not frame["skipped"].any(), frame["skip_reason"].tolist()
    assert (frame["inference_calls"] == 2).all()  # 16 steps / chunk of 8: images rendered twice per episode
    assert summary["serving"]["vla"]["requests"]["ok"] == 16


def test_base_and_its_adapter_are_evaluated_on_one_deployment(ray_session, scene_db: Path, tmp_path: Path) -> None:
    """`vla=BASE` and `vla=BASE@ADAPTER`: one deployment serves both, and rows are labelled apart."""
    import jax

    from gauntlet.policies.vla.policy import VLAPolicy

    base = VLAPolicy.create("tiny", seed=1)
    base.save(tmp_path / "base")
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda p: np.asarray(p) + rng.normal(0, 0.5, np.shape(p)).astype(np.float32),
                                    base.init_adapter(0))
    base.add_adapter("d1", params)
    base.save_adapter("d1", tmp_path / "adapters" / "d1")
    run = tmp_path / "run"
    summary = run_eval(_cfg(scenes=scene_db, policy=[f"vla={tmp_path / 'base'}",
                                                     f"vla={tmp_path / 'base'}@{tmp_path / 'adapters' / 'd1'}"],
                            out=run, trials=1, actors=1, horizon=16, variants="D1", limit=2))
    frame = _keys_exactly_once(run)
    assert sorted(frame["policy"].unique()) == ["vla", "vla@d1"]
    assert not frame["skipped"].any(), frame["skip_reason"].tolist()
    assert summary["serving"]["vla"]["requests"]["ok"] == 8  # 2 scenes x 2 policies x 2 chunks, one deployment
    with pytest.raises(EvalConfigError, match="not an adapter checkpoint"):
        run_eval(_cfg(scenes=scene_db, policy=[f"vla={tmp_path / 'base'}@{tmp_path / 'nowhere'}"],
                      out=tmp_path / "bad", horizon=16))


def test_a_policy_replica_killed_mid_run_costs_no_episode(ray_session, scene_db: Path, tmp_path: Path) -> None:
    from gauntlet.deployments.app import EVAL_APP, deployment_name

    run = tmp_path / "run"
    replica_tag = f"ServeReplica:{EVAL_APP}:{deployment_name('random')}"
    # Actors are mid-episode, asking the replica for chunks, when it is killed (`deploy=`: random would
    # otherwise run in the actors). Two envs per actor: both their requests are retried.
    thread, killed = _kill_mid_run(run, _replica_pid(replica_tag), timeout_s=180)
    summary = run_eval(_cfg(scenes=scene_db, policy=["deploy=random"], out=run, trials=3, actors=2, horizon=60,
                            write_every=1, envs_per_actor=2))
    thread.join(5)
    assert killed, "the policy replica should have been killed mid-run"
    frame = _keys_exactly_once(run)
    assert len(frame) == summary["total"] == 18
    assert not frame["skipped"].any(), frame["skip_reason"].tolist()  # Serve restarted it; actors retried
    assert summary["problems"] == []
    # Stats come from the restarted replica, which answered the rest of the run.
    assert summary["serving"]["random"]["requests"]["ok"] > 0


# An unreachable remote server (a clear error within its retry budget, before any work) and a policy whose
# every episode is skipped (exit 1 with the reasons): tests/platform/eval/test_remote_openpi.py.
