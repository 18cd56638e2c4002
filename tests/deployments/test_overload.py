"""A replica whose queue is full answers at once, on every protocol, and recovers: real Serve, real clients.

The ingress replica's inference thread is held shut by a gate (a batch that takes as long as the
test wants), with room for 2 requests behind it. Everything sent while the queue is full must be
answered while the gate is still shut (so: at once, never queued): HTTP 503, gRPC UNAVAILABLE, the
openpi WebSocket's `overloaded: ` text frame (the session stays open: the client sends again on it),
a handle caller's `overloaded` value. When the gate opens, the queued requests get their actions
and the replica serves normally. A rollout actor's source treats the
refusal as transient: it backs off and sends again, and its episode never sees it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import APP_NAME, PolicyServing, deployment_name
from gauntlet.deployments.batcher import OVERLOADED_KIND
from gauntlet.deployments.grpc_client import PolicyGrpcClient
from gauntlet.deployments.ws_guard import OVERLOADED_FRAME_PREFIX
from gauntlet.keys import STATE_KEY
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.registry import PolicyRef
from gauntlet.policies.remote import RemoteBusyError, RemotePolicy

BOUND = 2  # requests the replica queues behind its running batch
SLOTS = 64  # Serve request slots of the replica: room for everything the tests send at once
OBS = {STATE_KEY: np.zeros(8, np.float32)}


def _gated_ingress_class() -> type:
    import threading

    from gauntlet.deployments.ingress import PolicyIngress

    class GatedIngress(PolicyIngress):
        """The random policy as the app's ingress, its batches held until `open_gate`."""

        async def __init__(self, *args: Any, **kwargs: Any) -> None:
            await super().__init__(*args, **kwargs)
            self.gate = threading.Event()
            self.entered = threading.Event()  # a batch is on the inference thread, held by the gate

        def _infer_batch(self, items: list, enqueued_at: list[float]) -> list:
            self.entered.set()
            self.gate.wait(120)
            return super()._infer_batch(items, enqueued_at)

        def open_gate(self) -> None:
            self.gate.set()

        def close_gate(self) -> None:
            self.entered.clear()
            self.gate.clear()

        def gate_state(self) -> dict[str, Any]:
            return {"entered": self.entered.is_set(), "queued": self.batcher.queued}

    return GatedIngress


@pytest.fixture(scope="module")
def gated(ray_session, free_ports):
    from ray import cloudpickle, serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from gauntlet.deployments.app import GRPC_SERVICER, _bind_policy

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test class lives in this module
    serve.shutdown()  # a Serve left running by an earlier test keeps its own ports
    http_port, grpc_port = free_ports(2)
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=http_port),
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[GRPC_SERVICER]))
    spec = PolicyServing(PolicyRef("random"), max_batch_size=2, batch_wait_timeout_s=0.0, max_queued=BOUND,
                         num_cpus=0.25)
    handle = serve.run(_bind_policy(serve, _gated_ingress_class(), spec, max_ongoing_requests=SLOTS),
                       name=APP_NAME, route_prefix="/")
    yield handle, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    handle.open_gate.remote().result()
    serve.shutdown()


def _until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _fill(handle: Any) -> list[Any]:
    """One request held on the inference thread and BOUND queued behind it: the queue is full."""
    handle.close_gate.remote().result()
    held = [handle.infer.remote(OBS)]
    _until(lambda: handle.gate_state.remote().result()["entered"], "the held batch")
    held += [handle.infer.remote(OBS) for _ in range(BOUND)]
    _until(lambda: handle.gate_state.remote().result()["queued"] == BOUND, "the queue to fill")
    return held


def _overloaded_count(handle: Any) -> int:
    return handle.get_stats.remote().result()["requests"].get(OVERLOADED_KIND, 0)


def _ws_answer(url: str) -> tuple[str | bytes, Any]:
    """The first answer of a new session, and the session (still open: the caller closes it)."""
    from websockets.sync.client import connect

    # websockets >= 16 warns unless a connection held outside a `with` block says so (`legacy`).
    legacy = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
    ws = connect(url, open_timeout=60, **legacy)
    ws.recv(timeout=60)  # metadata
    ws.send(msgpack_numpy.packb(OBS))
    return ws.recv(timeout=60), ws


def test_a_full_queue_is_answered_at_once_on_every_protocol_and_the_replica_recovers(gated) -> None:
    handle, base, grpc_target = gated
    infer_url = f"{base}/v1/policies/random/infer"
    ws_url = f"ws://{base.removeprefix('http://')}/v1/policies/random/ws"
    ws_client = RemotePolicy(ws_url, timeout_s=60)  # its session opens before the queue fills
    held = _fill(handle)
    before = _overloaded_count(handle)
    client = PolicyGrpcClient(grpc_target, timeout_s=60)

    def grpc_code() -> grpc.StatusCode | None:
        try:
            client.infer("random", OBS)
        except grpc.RpcError as exc:
            return exc.code()
        return None

    with cf.ThreadPoolExecutor(8) as pool:  # all at once, while the gate is shut
        http = [pool.submit(httpx.post, infer_url, json={STATE_KEY: [0.0] * 8}, timeout=60) for _ in range(3)]
        batch = pool.submit(httpx.post, infer_url, json={"batch": [{STATE_KEY: [0.0] * 8}] * 2}, timeout=60)
        grpc_codes = [pool.submit(grpc_code) for _ in range(2)]
        ws = pool.submit(_ws_answer, ws_url)
        by_handle = handle.infer.remote(OBS).result(timeout_s=60)
        many = handle.infer_many.remote([OBS, OBS]).result(timeout_s=60)
        answers = [f.result(timeout=60) for f in http]
        batch_answer, codes, (ws_text, ws_session) = batch.result(timeout=60), [f.result(60) for f in grpc_codes], ws.result(60)
    state = handle.gate_state.remote().result()
    assert state == {"entered": True, "queued": BOUND}  # all of it answered while the batch was still held

    assert [a.status_code for a in answers] == [503] * 3
    assert all("queue is full" in a.json()["error"] for a in answers)
    assert batch_answer.status_code == 200 and [r["status"] for r in batch_answer.json()["results"]] == [503, 503]
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 2
    assert isinstance(ws_text, str) and ws_text.startswith(OVERLOADED_FRAME_PREFIX) and "queue is full" in ws_text
    assert by_handle["status"] == 503 and by_handle["kind"] == OVERLOADED_KIND
    assert [m["kind"] for m in many] == [OVERLOADED_KIND] * 2
    assert _overloaded_count(handle) - before == 3 + 2 + 2 + 1 + 1 + 2
    # Gauntlet's WebSocket client: a retryable RemoteBusyError, its connection kept.
    connection = ws_client._local.conn
    with pytest.raises(RemoteBusyError, match="queue is full"):
        ws_client.infer_one(OBS)

    handle.open_gate.remote().result()
    assert all(r.result(timeout_s=60)["actions"].shape == (8, 7) for r in held)  # the queued were untouched
    assert httpx.post(infer_url, json={STATE_KEY: [0.0] * 8}, timeout=60).status_code == 200
    assert client.infer("random", OBS)["actions"].shape == (8, 7)
    # The refused sessions went on: answered on the same connection once the queue has room.
    ws_session.send(msgpack_numpy.packb(OBS))
    assert msgpack_numpy.unpackb(ws_session.recv(timeout=60))["actions"].shape == (8, 7)
    ws_session.close()
    assert ws_client.infer_one(OBS)["actions"].shape == (8, 7) and ws_client._local.conn is connection
    ws_client.close()
    ws_text, fresh = _ws_answer(ws_url)
    assert msgpack_numpy.unpackb(ws_text)["actions"].shape == (8, 7)
    fresh.close()
    client.close()


def test_a_rollout_source_backs_off_and_resends_what_a_full_queue_refused(gated) -> None:
    """ServeSource (what rollout actors call): a refused round and a refused blocking call are sent
    again after a backoff and answered once the replica catches up; no episode sees an error."""
    from gauntlet.platform.eval.sources import ServeSource

    handle, _, _ = gated
    source = ServeSource(APP_NAME, deployment_name("random"), retry_s=120)
    held = _fill(handle)
    before = _overloaded_count(handle)

    async def round_of_three() -> list[np.ndarray]:
        return list(await asyncio.gather(*(source.next_chunk_async(OBS) for _ in range(3))))

    with cf.ThreadPoolExecutor(2) as pool:
        rounds = pool.submit(asyncio.run, round_of_three())
        blocking = pool.submit(source.next_chunk, OBS)
        # Refused at least twice each (the group of three, the blocking call): they came back after a backoff.
        _until(lambda: _overloaded_count(handle) - before >= 2 * (3 + 1), "the sources to retry")
        assert not rounds.done() and not blocking.done()
        handle.open_gate.remote().result()
        assert [a.shape for a in rounds.result(timeout=120)] == [(8, 7)] * 3
        assert blocking.result(timeout=120).shape == (8, 7)
    assert all(r.result(timeout_s=60)["actions"].shape == (8, 7) for r in held)


def test_the_queue_bound_is_a_serve_flag_checked_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    from gauntlet.deployments.serve_cli import ServeCLIConfig, serving_specs
    from gauntlet.runtime.config_args import parse_config

    cfg = parse_config(ServeCLIConfig, ["--policy", "random", "--max-batch-size", "8", "--max-queued", "16"], "p", "d")
    assert [s.max_queued for s in serving_specs(cfg)] == [16]
    with pytest.raises(SystemExit):
        parse_config(ServeCLIConfig, ["--policy", "random", "--max-batch-size", "8", "--max-queued", "3"], "p", "d")
    assert "--max-queued must be 0 (the default) or >= max_batch_size (8), got 3" in capsys.readouterr().err
