"""The tiny JAX VLA on real Serve: warm-up before healthy, batching without compiles, LoRA multiplexing."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import PolicyServing, start_serve
from gauntlet.policies.registry import PolicyRef

HTTP_PORT = 18223
BASE = f"http://127.0.0.1:{HTTP_PORT}/v1/policies/vla"


def _obs(meta: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    obs = {"observation/state": rng.normal(size=8).round(3).tolist(), "prompt": "pick up the red cube"}
    for key in ("observation/image", "observation/wrist_image"):
        if key in meta["observation_spec"]:
            shape = meta["observation_spec"][key]["shape"]
            obs[key] = rng.integers(0, 255, size=shape).tolist()
    return obs


@pytest.fixture(scope="module")
def vla_served(ray_session, tmp_path_factory):
    from ray import serve

    from gauntlet.policies.vla.policy import VLAPolicy

    adapters = tmp_path_factory.mktemp("adapters")
    base = VLAPolicy.create("tiny", seed=0)
    for i, name in enumerate(("left", "right")):
        params = base.init_adapter(seed=i)
        import jax

        rng = np.random.default_rng(100 + i)
        params = jax.tree_util.tree_map(lambda p, r=rng: np.asarray(p) + r.normal(0, 0.5, np.shape(p)).astype(np.float32), params)
        base.add_adapter(name, params)
        base.save_adapter(name, adapters / name)
    spec = PolicyServing(PolicyRef("vla"), max_batch_size=8, batch_wait_timeout_s=0.05, num_cpus=0.5,
                         policy_kwargs={"config_name": "tiny"}, adapters_dir=str(adapters))
    serve.shutdown()  # a Serve left running by an earlier test keeps its own ports
    start_serve([spec], http_port=HTTP_PORT, grpc_port=None)
    handle = serve.get_deployment_handle("policy-vla", app_name="gauntlet")
    yield handle
    serve.shutdown()


def test_first_request_needs_no_compilation(vla_served) -> None:
    before = vla_served.get_stats.remote().result()["compile_count"]
    assert before > 0  # every bucket was compiled while starting, before the replica was healthy
    meta = httpx.get(f"{BASE}/metadata").json()
    r = httpx.post(f"{BASE}/infer", json=_obs(meta, 0), timeout=30)
    assert r.status_code == 200 and np.array(r.json()["actions"]).shape == (meta["chunk_len"], 7)
    with httpx.Client(timeout=30) as client, cf.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: client.post(f"{BASE}/infer", json=_obs(meta, i)).status_code, range(24)))
    assert codes == [200] * 24
    stats = vla_served.get_stats.remote().result()
    assert stats["compile_count"] == before  # no batch size compiled on demand
    assert stats["max_batch_size_seen"] > 1


def test_adapters_are_multiplexed_on_one_base(vla_served) -> None:
    meta = httpx.get(f"{BASE}/metadata").json()
    obs = _obs(meta, 7)
    outs = {}
    for adapter in (None, "left", "right", "left"):
        url = f"{BASE}/infer" + (f"?adapter={adapter}" if adapter else "")
        r = httpx.post(url, json=obs, timeout=60)
        assert r.status_code == 200, r.text
        outs.setdefault(adapter, []).append(np.array(r.json()["actions"]))
    assert not np.allclose(outs[None][0], outs["left"][0])
    assert not np.allclose(outs["left"][0], outs["right"][0])
    np.testing.assert_allclose(outs["left"][0], outs["left"][1], atol=1e-5)  # same adapter, same answer
    r = httpx.post(f"{BASE}/infer?adapter=missing", json=obs, timeout=30)
    assert r.status_code == 404 and "missing" in r.json()["error"]


def test_mixed_adapter_batch_with_a_bad_request(vla_served) -> None:
    meta = httpx.get(f"{BASE}/metadata").json()
    good = _obs(meta, 3)
    bad = dict(good, **{"observation/image": [[0]]})
    body = {"batch": [good, bad, good]}
    r = httpx.post(f"{BASE}/infer?adapter=right", json=body, timeout=60)
    results = r.json()["results"]
    assert ["actions" in x for x in results] == [True, False, True]
    assert "observation/image" in results[1]["error"]
