"""Policies with per-episode memory on several Serve replicas, on real Ray, Serve and robosuite.

The scripted oracle keeps an expert (grasp timers) per episode id and BC-RNN a hidden state, each
inside the replica that answered. A request naming a Serve session sticks to one replica
(deployments/session_router); an eval on 2 replicas gives the rows of 1; and a replica killed
mid-episode makes its episodes start again from their scenes (counted in `episode_restarts`) rather
than continue with an expert that never saw their beginning.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest

from gauntlet.deployments.app import EVAL_APP, deployment_name
from gauntlet.platform.eval.config import EvalConfig
from gauntlet.platform.eval.driver import run_eval
from gauntlet.platform.eval.results import KEY
from gauntlet.runtime.config_args import parse_config

OUTCOME = ["success", "skipped", "steps", "recovery_step"]  # what a lost memory would change
WHO_APP = "session-affinity"


class _WhoAnswers:
    """Answers with the full id (the actor name) of the replica that took the request."""

    def who(self) -> str:
        from ray import serve

        return serve.get_replica_context().replica_id.to_full_id_str()


@pytest.fixture(scope="module")
def serve_on_free_port(ray_session, free_ports) -> Iterator[None]:
    """Serve's proxy on a free port (not 8000, which a concurrent Serve may hold)."""
    from ray import serve
    from ray.serve.config import HTTPOptions

    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=free_ports(1)[0]))
    yield


@pytest.fixture(scope="module")
def who_app(serve_on_free_port) -> Iterator[object]:
    from ray import cloudpickle, serve

    from gauntlet.deployments.session_router import request_router_config

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test replica lives in this module
    deployment = serve.deployment(_WhoAnswers, name="who", num_replicas=2, ray_actor_options={"num_cpus": 0},
                                  request_router_config=request_router_config())
    yield serve.run(deployment.bind(), name=WHO_APP, route_prefix=None)
    serve.delete(WHO_APP)


def _running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def test_a_session_sticks_to_its_replica_until_it_dies_and_sessionless_requests_spread(who_app) -> None:
    import ray

    sessions = [f"session-{i}" for i in range(20)]
    pinned: dict[str, str] = {}
    for session in sessions:
        answered = {who_app.options(session_id=session).who.remote().result() for _ in range(5)}
        assert len(answered) == 1, f"{session} reached {answered}"
        pinned[session] = answered.pop()
    assert len(set(pinned.values())) == 2  # new sessions go to either replica (2**-19 to miss one)
    assert len({who_app.who.remote().result() for _ in range(30)}) == 2  # no session: load balanced

    # The replica of session-0 dies: the session moves to a live replica and stays there, also once
    # Serve has started the dead one's replacement.
    dead = pinned["session-0"]
    ray.kill(ray.get_actor(dead, namespace="serve"), no_restart=True)
    moved = None
    deadline = time.monotonic() + 120
    while moved is None and time.monotonic() < deadline:
        try:
            moved = who_app.options(session_id="session-0").who.remote().result(timeout_s=30)
        except Exception:  # noqa: BLE001 - the request that found the replica dead; the router drops it
            time.sleep(0.5)
    assert moved is not None and moved != dead
    while _running_replicas(WHO_APP, "who") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _running_replicas(WHO_APP, "who") == 2
    assert {who_app.options(session_id="session-0").who.remote().result() for _ in range(10)} == {moved}


# ------------------------------------------------------------------------------ eval on replicas


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory, generate_scenes) -> Path:
    return generate_scenes(tmp_path_factory.mktemp("stateful") / "scenes", variants="D0,D1",
                           error_types="object_pose_perturb,object_push")


def _eval(scenes: Path, out: Path, *, replicas: int, policy: tuple[str, ...], actors: int = 2) -> tuple[dict, pd.DataFrame]:
    argv = ["--scenes", str(scenes), "--out", str(out), "--replicas", str(replicas), "--actors", str(actors),
            "--envs-per-actor", "2", "--horizon", "120", "--write-every", "1"]
    for p in policy:
        argv += ["--policy", p]
    summary = run_eval(parse_config(EvalConfig, argv, "gauntlet eval", ""))
    frame = pd.read_parquet(out / "results.parquet")
    assert not frame.duplicated(subset=list(KEY)).any()
    return summary, frame.set_index(["scene_id", "policy", "trial"]).sort_index()


@pytest.fixture(scope="module")
def one_replica(scenes: Path, tmp_path_factory: pytest.TempPathFactory, serve_on_free_port) -> pd.DataFrame:
    """The reference rows: the served oracle and BC-RNN on one replica each."""
    summary, frame = _eval(scenes, tmp_path_factory.mktemp("one") / "run", replicas=1,
                           policy=("deploy=scripted", "deploy=bc_rnn"))
    assert summary["problems"] == [] and not frame["skipped"].any(), frame["skip_reason"].tolist()
    assert (frame["episode_restarts"] == 0).all()
    assert frame.xs("scripted", level="policy")["success"].any()  # the oracle solves scenes: rows say something
    return frame


@pytest.mark.slow
def test_stateful_policies_on_two_replicas_give_the_rows_of_one(one_replica: pd.DataFrame, scenes: Path,
                                                                tmp_path: Path) -> None:
    summary, two = _eval(scenes, tmp_path / "run", replicas=2, policy=("deploy=scripted", "deploy=bc_rnn"))
    assert summary["problems"] == []
    # No memory was lost: every answer counted the episode's calls as the actor did (without session
    # affinity, answers from the replica that never saw an episode restart it, and this fails).
    assert (two["episode_restarts"] == 0).all()
    pd.testing.assert_frame_equal(two[OUTCOME], one_replica[OUTCOME])
    assert (two["inference_calls"] == one_replica["inference_calls"]).all()


def _kill_when(ready: Callable[[], object], process_tag: str, timeout_s: float,
               first_only: bool) -> tuple[threading.Thread, list[int]]:
    """A thread that SIGKILLs the test Ray's processes whose command line holds `process_tag` once
    `ready()` is true (only the first such process with `first_only`); returns it and the killed pids."""
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not killed:
            if ready():
                for proc in psutil.Process().children(recursive=True):  # this test process's Ray only
                    try:
                        if process_tag in " ".join(proc.cmdline()):
                            os.kill(proc.pid, signal.SIGKILL)
                            killed.append(proc.pid)
                            if first_only:
                                return
                    except psutil.Error:
                        continue
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread, killed


def _kill_replica_mid_run(run: Path, process_tag: str, timeout_s: float) -> tuple[threading.Thread, list[int]]:
    """SIGKILLs the test Ray's process whose command line holds `process_tag` once the run has written
    its first row: the actor's other episode is then mid-way, asking that replica for chunks."""
    results = run.joinpath("results")
    return _kill_when(lambda: results.exists() and any(results.glob("part-*.parquet")), process_tag, timeout_s,
                      first_only=True)


@pytest.mark.slow
def test_a_replica_killed_mid_episode_restarts_its_episodes_from_their_scenes(one_replica: pd.DataFrame,
                                                                              scenes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    thread, killed = _kill_replica_mid_run(run, f"ServeReplica:{EVAL_APP}:{deployment_name('scripted')}", 300)
    # One actor running two episodes at a time: when the first row is written, the other episode is
    # mid-way on the replica that is then killed. Serve starts a new one, which has no expert for it.
    summary, frame = _eval(scenes, run, replicas=1, policy=("deploy=scripted",), actors=1)
    thread.join(5)
    assert killed, "the oracle's replica should have been killed mid-run"
    assert summary["problems"] == [] and not frame["skipped"].any(), frame["skip_reason"].tolist()
    assert frame["episode_restarts"].sum() >= 1  # the episodes it held started again, counted
    reference = one_replica.xs("scripted", level="policy", drop_level=False)
    pd.testing.assert_frame_equal(frame[OUTCOME], reference[OUTCOME])  # and their rows are still right


def _kill_the_actor_once_the_replica_answered(deployment: str, timeout_s: float) -> tuple[threading.Thread, list[int]]:
    """SIGKILLs the test Ray's rollout actor once `deployment` of the eval app has answered a chunk:
    its episodes are mid-way, and the replica keeps their memory."""
    def answered() -> int:
        from ray import serve

        try:
            stats = serve.get_deployment_handle(deployment, app_name=EVAL_APP).get_stats.remote().result(timeout_s=5)
        except Exception:  # noqa: BLE001 - not deployed yet
            return 0
        return int(stats["requests"].get("ok", 0))

    return _kill_when(answered, "ray::RolloutActor", timeout_s, first_only=False)


def test_an_item_run_again_after_its_actor_died_is_a_new_episode_and_the_queue_holds_the_eval(
        scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], serve_on_free_port) -> None:
    """The oracle's replica still holds the memory of the episodes a killed actor was running: their
    next attempts run under ids of their own, so nothing is taken for a lost memory. And the replica's
    queue is sized for the eval: one actor with 70 seats (and one item waiting for a seat) may have 71
    requests waiting, past the batcher's default bound (64 at max_batch_size 4)."""
    run = tmp_path / "run"
    thread, killed = _kill_the_actor_once_the_replica_answered(deployment_name("scripted"), 300)
    argv = ["--scenes", str(scenes), "--out", str(run), "--policy", "deploy=scripted", "--actors", "1",
            "--envs-per-actor", "70", "--max-batch-size", "4", "--horizon", "120", "--write-every", "1",
            "--ping-timeout-s", "600"]
    summary = run_eval(parse_config(EvalConfig, argv, "gauntlet eval", ""))
    thread.join(5)
    log = capsys.readouterr().out
    assert killed, "the rollout actor should have been killed mid-run"
    requeued = [int(n) for n in re.findall(r"\[eval\] actor 0 lost .*; re-queued (\d+) item", log)]
    assert requeued and requeued[0] >= 1, log  # episodes the oracle had answered ran again
    frame = pd.read_parquet(run / "results.parquet")
    assert len(frame) == summary["total"] == 4 and not frame["skipped"].any(), frame["skip_reason"].tolist()
    assert (frame["episode_restarts"] == 0).all(), "a new attempt was taken for a lost memory"
    assert summary["serving"]["scripted"]["max_queued"] == 1 * (70 + 1)
