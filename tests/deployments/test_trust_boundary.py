"""Adapter names stay names, and every surface is behind the key: real Serve, real sockets.

The tiny VLA (a policy that really loads LoRA adapters from disk) serves an adapters directory that
holds a good adapter, a symlink alias of it, a broken one and a symlink that leads outside; beside
the directory lies a valid adapter that no client may reach. Every protocol (HTTP body, query and
header, the WebSocket through Serve's proxy and on the direct port, gRPC, handle calls) is tried
with traversals and aliases; no answer may carry a host path.
"""

from __future__ import annotations

import json
import os
import time

import grpc
import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import APP_NAME, PolicyServing, deployment_name, start_serve
from gauntlet.deployments.grpc_client import PolicyGrpcClient
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.registry import PolicyRef

HTTP_PORT, GRPC_PORT, WS_PORT = 18611, 19611, 18612
APP = APP_NAME
KEY = "trust-key"
AUTH = {"Authorization": f"Api-Key {KEY}"}
BASE = f"http://127.0.0.1:{HTTP_PORT}"
INFER = f"{BASE}/v1/policies/vla/infer"
# (name a client sends, what it is): every one must be refused before any file is touched.
TRAVERSALS = ["../outside", "../outside/evil", "/etc", "/tmp", "./good", "good/", "..", ".", "a/b", "a\\b",
              "good\n", " good", "x" * 129, "-good", "é"]


@pytest.fixture(scope="module")
def vla_app(ray_session, tmp_path_factory):
    from ray import serve

    from gauntlet.policies.vla.policy import VLAPolicy

    root = tmp_path_factory.mktemp("host")
    adapters, outside = root / "adapters", root / "outside"
    adapters.mkdir()
    outside.mkdir()
    base = VLAPolicy.create("tiny", seed=0)
    base.add_adapter("good", base.init_adapter(seed=1))
    base.save_adapter("good", adapters / "good")
    base.save_adapter("good", outside / "evil")  # valid, but outside the adapters directory
    (adapters / "alias").symlink_to(adapters / "good")  # the same adapter under a second name
    (adapters / "escape").symlink_to(outside / "evil")  # a name that leads outside
    (adapters / "broken").mkdir()
    (adapters / "broken" / "config.json").write_text('{"format_version": 1}')  # no kind, no params

    serve.shutdown()  # a Serve left running by an earlier test keeps its own ports
    spec = PolicyServing(PolicyRef("vla"), max_batch_size=1, num_cpus=0.25, policy_kwargs={"config_name": "tiny"},
                         adapters_dir=str(adapters))
    start_serve([spec], http_port=HTTP_PORT, grpc_port=GRPC_PORT, api_key=KEY, ws_port=WS_PORT)
    meta = httpx.get(f"{BASE}/v1/policies/vla/metadata", headers=AUTH, timeout=60).json()
    yield {"root": root, "meta": meta, "handle": serve.get_deployment_handle(deployment_name("vla"), app_name=APP)}
    serve.shutdown()


def _obs(meta: dict) -> dict:
    obs = {"observation/state": np.zeros(8, np.float32), "prompt": "pick up the red cube"}
    for key, spec in meta["observation_spec"].items():
        if spec["dtype"] == "uint8":
            obs[key] = np.zeros(spec["shape"], np.uint8)
    return obs


def _json(obs: dict) -> dict:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in obs.items()}


def _no_host_path(text: str, root) -> None:
    """No path of this host: neither the test's directories nor a source file (a traceback)."""
    for path in {str(root), os.path.realpath(root), os.path.dirname(os.path.dirname(__file__))}:
        assert path not in text, text
    assert ".py" not in text and "config.json" not in text.replace("cannot be loaded: config.json", ""), text


def _http(vla_app, adapter: str, where: str) -> httpx.Response:
    body = _json(_obs(vla_app["meta"]))
    if where == "body":
        return httpx.post(INFER, json={**body, "adapter": adapter}, headers=AUTH, timeout=60)
    if where == "query":
        return httpx.post(INFER, params={"adapter": adapter}, json=body, headers=AUTH, timeout=60)
    # httpx refuses header values with control characters: send those names through the other two
    return httpx.post(INFER, json=body, headers={**AUTH, "x-gauntlet-adapter": adapter.encode("utf-8")}, timeout=60)


def _ws_answer(url: str, obs: dict) -> str | dict:
    """The text (error) frame or the decoded answer for one observation over openpi's protocol."""
    from websockets.sync.client import connect

    with connect(url, additional_headers=AUTH, open_timeout=60, max_size=None) as ws:
        ws.recv()  # metadata
        ws.send(msgpack_numpy.packb(obs))
        reply = ws.recv(timeout=60)
    return reply if isinstance(reply, str) else msgpack_numpy.unpackb(reply)


def _grpc(obs: dict, adapter: str) -> grpc.RpcError | dict:
    client = PolicyGrpcClient(f"127.0.0.1:{GRPC_PORT}", application=APP, api_key=KEY, timeout_s=60)
    try:
        return client.infer("vla", obs, adapter=adapter)
    except grpc.RpcError as exc:
        return exc
    finally:
        client.close()


def test_traversals_are_refused_as_names_on_every_protocol(vla_app) -> None:
    obs, root, handle = _obs(vla_app["meta"]), vla_app["root"], vla_app["handle"]
    for name in TRAVERSALS:
        for where in ("body", "query", "header"):
            if where == "header" and (name != name.strip() or not name.isascii()):
                continue  # HTTP trims header values and carries ASCII only: the other two carry these
            r = _http(vla_app, name, where)
            assert r.status_code == 400 and "adapter" in r.json()["error"], (name, where, r.text)
            _no_host_path(r.text, root)
        for url in (f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/vla/ws", f"ws://127.0.0.1:{WS_PORT}"):
            reply = _ws_answer(url, {**obs, "adapter": name})
            assert isinstance(reply, str) and reply.startswith("adapter:"), (name, url, reply)
            _no_host_path(reply, root)
        error = _grpc(obs, name)
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error)
        _no_host_path(error.details(), root)
        for answer in (handle.infer.remote(obs, name).result(), *handle.infer_many.remote([obs], name).result()):
            assert answer["status"] == 400 and answer["kind"] == "invalid_adapter", (name, answer)
            _no_host_path(answer["error"], root)
    # A name that is not a string is refused too, never ignored.
    r = httpx.post(INFER, json={**_json(obs), "adapter": ["good"]}, headers=AUTH, timeout=60)
    assert r.status_code == 400 and "adapter" in r.json()["error"]


def test_unknown_is_the_same_answer_whether_or_not_something_exists_outside(vla_app) -> None:
    """`escape` is a symlink to a valid adapter outside the directory; `ghost` is nothing at all."""
    obs, root = _obs(vla_app["meta"]), vla_app["root"]
    answers = {}
    for name in ("escape", "ghost"):
        r = _http(vla_app, name, "query")
        assert r.status_code == 404, r.text
        answers[name] = r.json()["error"].replace(repr(name), "NAME")
        _no_host_path(r.text, root)
        error = _grpc(obs, name)
        assert error.code() == grpc.StatusCode.NOT_FOUND and error.details().replace(repr(name), "NAME") == answers[name]
        assert vla_app["handle"].infer.remote(obs, name).result()["status"] == 404
    assert answers["escape"] == answers["ghost"]
    assert "'escape'" not in answers["ghost"]  # the listing names only adapters that resolve inside
    assert "available: ['alias', 'broken', 'good']" in answers["ghost"]


def test_a_broken_adapter_is_named_without_its_host_path(vla_app) -> None:
    obs, root = _obs(vla_app["meta"]), vla_app["root"]
    r = _http(vla_app, "broken", "body")
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert error.startswith("adapter 'broken' cannot be loaded: config.json: ") and "manifest" in error, error
    _no_host_path(r.text, root)
    reply = _ws_answer(f"ws://127.0.0.1:{WS_PORT}", {**obs, "adapter": "broken"})
    assert isinstance(reply, str) and reply.startswith("adapter 'broken' cannot be loaded")
    _no_host_path(reply, root)
    error = _grpc(obs, "broken")
    assert error.code() == grpc.StatusCode.INTERNAL and "'broken'" in error.details()
    _no_host_path(error.details(), root)


def test_an_adapter_and_its_alias_share_one_slot(vla_app) -> None:
    obs = _obs(vla_app["meta"])
    answers = [_http(vla_app, name, where) for name, where in (("good", "query"), ("alias", "body"), ("alias", "header"))]
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
    actions = [np.array(r.json()["actions"]) for r in answers]
    np.testing.assert_allclose(actions[0], actions[1], atol=1e-5)
    assert isinstance(_grpc(obs, "alias"), dict)
    assert _ws_answer(f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/vla/ws", {**obs, "adapter": "alias"})["actions"].shape
    meta = httpx.get(f"{BASE}/v1/policies/vla/metadata", headers=AUTH, timeout=60).json()
    assert meta["extra"]["adapters"] == ["good"]  # loaded once, under its canonical name


def test_healthz_is_the_one_open_route_and_lists_no_paths(vla_app) -> None:
    r = httpx.get(f"{BASE}/healthz", timeout=30)
    assert r.json() == {"status": "ok", "policies": ["vla"]}
    _no_host_path(r.text, vla_app["root"])
    assert httpx.get(f"{BASE}/v1/policies/vla/metadata", timeout=30).status_code == 401


def test_serves_own_endpoints_need_the_key(vla_app) -> None:
    from ray.serve.generated import serve_pb2, serve_pb2_grpc

    for path in ("/-/routes", "/-/healthz"):
        assert httpx.get(f"{BASE}{path}", timeout=30).status_code == 401
        assert httpx.get(f"{BASE}{path}", headers={"Authorization": "Api-Key wrong"}, timeout=30).status_code == 401
    assert httpx.get(f"{BASE}/-/routes", headers=AUTH, timeout=30).json() == {"/": APP}
    assert httpx.get(f"{BASE}/-/healthz", headers=AUTH, timeout=30).status_code == 200

    channel = grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}")
    stub = serve_pb2_grpc.RayServeAPIServiceStub(channel)
    calls = (lambda md: stub.ListApplications(serve_pb2.ListApplicationsRequest(), metadata=md, timeout=30),
             lambda md: stub.Healthz(serve_pb2.HealthzRequest(), metadata=md, timeout=30))
    for call in calls:
        for metadata in ((), (("authorization", "Api-Key wrong"),)):
            with pytest.raises(grpc.RpcError) as refused:
                call(metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert list(calls[0]((("authorization", f"Api-Key {KEY}"),)).application_names) == [APP]
    assert calls[1]((("authorization", f"Api-Key {KEY}"),)).message == "success"
    # Reflection, which the proxy would answer past any key check, is off when a key is set.
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
    with pytest.raises(grpc.RpcError) as refused:
        list(reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30))
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()


def test_the_proxys_key_goes_away_with_the_app(vla_app) -> None:
    """A keyed app publishes its key for the proxy; once deleted, Serve's endpoints are open again
    (their answer then is what they always say: route prefixes, app names, "success")."""
    from ray import serve
    from ray.experimental.internal_kv import _internal_kv_list

    from gauntlet.deployments.proxy_guard import KV_NAMESPACE, KV_PREFIX

    this_app = KV_PREFIX + f"{APP}/".encode()  # entries of this app's replicas (not every app's in the test Ray)
    assert len(_internal_kv_list(this_app, namespace=KV_NAMESPACE)) == 1
    serve.delete(APP)
    assert _internal_kv_list(this_app, namespace=KV_NAMESPACE) == []
    deadline = time.monotonic() + 30  # the proxy re-reads the published keys once a second
    while (r := httpx.get(f"{BASE}/-/routes", timeout=30)).status_code == 401 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert r.status_code == 200 and json.loads(r.text) == {}


def test_a_setup_hook_step_that_fails_leaves_the_worker_up_and_no_proxy_starts_unguarded(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """The job's worker setup hook runs in every worker (replicas in their own environment too): a
    step that fails must not kill the worker, and Serve's proxy must then refuse to start in that
    process rather than answer its own endpoints without the key. Here the handler the guard wraps
    is missing, as in a Ray whose internals moved."""
    from ray.serve._private import default_impl, replica
    from ray.serve._private.proxy import GenericProxy, HTTPProxy

    from gauntlet.deployments.grpc_bind import restrict_grpc_bind

    for owner, name in ((GenericProxy, "__init__"), (default_impl, "add_grpc_address"),
                        (replica, "add_port_to_grpc_server")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # what the hook patches is restored afterwards
    monkeypatch.delattr(GenericProxy, "_get_health_or_routes_reponse")

    restrict_grpc_bind()  # returns: the worker lives
    assert ("the API key on Serve's own endpoints could not be set up in this worker: AttributeError"
            in capfd.readouterr().err)
    with pytest.raises(RuntimeError, match="Serve's proxy refuses to start here"):
        HTTPProxy(node_id="node", node_ip_address="127.0.0.1", is_head=True, proxy_router=None,
                  self_actor_name="proxy")
    assert getattr(default_impl.add_grpc_address, "_gauntlet", False)  # the other steps still ran
