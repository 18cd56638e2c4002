"""openpi's WebSocket served by the policy replica itself (`--ws-port`), beside Serve's proxy.

Real Serve, openpi's own unmodified client and raw `websockets` clients over real sockets. The
direct port keeps the proxied route's contract: the key checked during the handshake (403, no
metadata frame), the frame limit (close 1009), an error text frame then close 1011 for a bad observation, and
requests that join the same replica's batches as handle callers.
"""

from __future__ import annotations

import numpy as np
import pytest

from gauntlet.deployments.app import APP_NAME, PolicyServing, build_app, deployment_name
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.registry import PolicyRef

HTTP_PORT, WS_PORT = 18331, 18332
KEY = "direct-key"
LIMIT = 64 * 1024  # max_request_bytes of this app: small, so an over-limit frame is cheap to send
STATE = "observation/state"


@pytest.fixture(scope="module")
def direct(ray_session):
    from ray import serve
    from ray.serve.config import HTTPOptions

    serve.shutdown()  # a Serve left running by an earlier test keeps its own ports
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=HTTP_PORT))
    spec = PolicyServing(PolicyRef("random"), max_batch_size=8, num_cpus=0.25)
    serve.run(build_app([spec], api_key=KEY, max_request_bytes=LIMIT, ws_port=WS_PORT), name=APP_NAME,
              route_prefix="/")
    yield serve.get_deployment_handle(deployment_name("random"), app_name=APP_NAME)
    serve.shutdown()


def test_openpis_own_client_is_answered_by_the_replica_on_its_port(direct) -> None:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    direct.reset_stats.remote().result()
    client = WebsocketClientPolicy("127.0.0.1", WS_PORT, api_key=KEY)
    meta = client.get_server_metadata()
    assert meta["action_dim"] == 7 and meta["serving"]["max_batch_size"] == 8
    for i in range(3):
        out = client.infer({STATE: np.full(8, i, np.float32)})
        assert out["actions"].shape == (8, 7) and out["server_timing"]["batch_size"] == 1
    direct.infer.remote({STATE: np.zeros(8, np.float32)}).result()
    stats = direct.get_stats.remote().result()
    assert stats["requests"] == {"ok": 4}  # the same replica, the same batcher, for both paths


def test_the_named_path_works_and_other_policies_are_refused(direct) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    auth = {"Authorization": f"Api-Key {KEY}"}
    with connect(f"ws://127.0.0.1:{WS_PORT}/v1/policies/random/ws", additional_headers=auth) as ws:
        assert msgpack_numpy.unpackb(ws.recv())["action_dim"] == 7
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{WS_PORT}/v1/policies/bc_rnn/ws", additional_headers=auth)
    assert refused.value.response.status_code == 403 and b"'bc_rnn'" in refused.value.response.body


def test_the_key_is_checked_during_the_handshake(direct) -> None:
    """As on the proxied route: refused before any frame, so no metadata frame is ever sent."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    for headers in (None, {"Authorization": "Api-Key wrong"}, {"Authorization": KEY}):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{WS_PORT}", additional_headers=headers)
        assert refused.value.response.status_code == 403


def test_bad_frames_close_only_their_own_connection(direct) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    auth = {"Authorization": f"Api-Key {KEY}"}
    with connect(f"ws://127.0.0.1:{WS_PORT}", additional_headers=auth, max_size=None) as bystander:
        bystander.recv()
        with connect(f"ws://127.0.0.1:{WS_PORT}", additional_headers=auth) as ws:
            ws.recv()
            ws.send(msgpack_numpy.packb({STATE: np.zeros(3, np.float32)}))  # wrong shape
            error = ws.recv()
            assert isinstance(error, str) and "observation/state" in error
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 1011
        with connect(f"ws://127.0.0.1:{WS_PORT}", additional_headers=auth) as ws:
            ws.recv()
            ws.send(b"\0" * (LIMIT + 1))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 1009
        bystander.send(msgpack_numpy.packb({STATE: np.zeros(8, np.float32)}))
        assert msgpack_numpy.unpackb(bystander.recv())["actions"].shape == (8, 7)


def test_a_port_setting_needs_a_policy_in_gauntlets_own_environment() -> None:
    spec = PolicyServing(PolicyRef("random"), runtime_env={"pip": ["lerobot==0.4.4"]})
    with pytest.raises(ValueError, match="ws_port"):
        build_app([spec], ws_port=WS_PORT)
