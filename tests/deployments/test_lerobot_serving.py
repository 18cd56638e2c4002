"""LeRobot ACT and Diffusion on Gauntlet's batched replicas, in their own Ray runtime_env.

One module-scoped start of the LeRobot environment (the default release, lerobot 0.6.1, built by Ray's uv
plugin on first use and reused by every replica and task of this Ray session): random policies are
saved with `save_pretrained` inside it, served over HTTP and the openpi WebSocket, compared with
LeRobot's own inference on the same inputs, and evaluated end to end with `gauntlet eval`.
"""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import APP_NAME, PolicyServing, build_app, deployment_name, start_serve
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.registry import PolicyRef, runtime_env_for

pytestmark = pytest.mark.slow

HTTP_PORT = 18461
BASE = f"http://127.0.0.1:{HTTP_PORT}"
DIFFUSION_APP = "lerobot-diffusion"
IMAGE = 32  # px: small so the CPU is fast; the replica declares it, clients send it
MSGPACK = {"content-type": "application/msgpack"}


def _observations(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"observation/state": rng.normal(size=8).astype(np.float32),
             "observation/image": rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
             "observation/wrist_image": rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
             "prompt": "lift the cube"} for _ in range(count)]


def _stacked(observations: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([o[k] for o in observations]) for k in observations[0] if k != "prompt"}


@pytest.fixture(scope="module")
def lerobot_env(ray_session):
    """(LeRobot's reference inference as a task in the LeRobot env, ray)."""
    import ray

    from gauntlet.policies.lerobot.untrained_checkpoints import reference_actions

    return ray.remote(num_cpus=0.5, max_retries=0, runtime_env=runtime_env_for("lerobot"))(reference_actions), ray


@pytest.fixture(scope="module")
def pretrained(lerobot_env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import ray

    from gauntlet.policies.lerobot.untrained_checkpoints import save_random_policy

    save = ray.remote(num_cpus=0.5, max_retries=0, runtime_env=runtime_env_for("lerobot"))(save_random_policy)
    root = tmp_path_factory.mktemp("lerobot")
    refs = {kind: save.remote(kind, str(root / kind), image_size=IMAGE) for kind in ("act", "diffusion")}
    return {kind: ray.get(ref, timeout=1800) for kind, ref in refs.items()}


@pytest.fixture(scope="module")
def served(pretrained: dict[str, str]):
    from ray import serve

    serve.shutdown()  # other modules' Serve instances listen on other ports
    env = runtime_env_for("lerobot")
    act = PolicyServing(PolicyRef("lerobot", pretrained["act"]), max_batch_size=8, batch_wait_timeout_s=0.05,
                        num_cpus=0.5, runtime_env=env)
    start_serve([act], http_port=HTTP_PORT, grpc_port=None)
    diffusion = PolicyServing(PolicyRef("lerobot", pretrained["diffusion"]), max_batch_size=8,
                              batch_wait_timeout_s=0.05, num_cpus=0.5, runtime_env=env)
    serve.run(build_app([diffusion]), name=DIFFUSION_APP, route_prefix="/diffusion")
    yield {"act": serve.get_deployment_handle(deployment_name("lerobot"), app_name=APP_NAME),
           "diffusion": serve.get_deployment_handle(deployment_name("lerobot"), app_name=DIFFUSION_APP)}
    serve.shutdown()


def _post_all(url: str, observations: list[dict], clients: int = 8) -> list[httpx.Response]:
    with httpx.Client(timeout=120) as client, cf.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda o: client.post(url, content=msgpack_numpy.packb(o), headers=MSGPACK),
                             observations))


def test_metadata_is_derived_from_the_lerobot_config(served) -> None:
    meta = httpx.get(f"{BASE}/v1/policies/lerobot/metadata").json()
    assert (meta["name"], meta["action_dim"], meta["chunk_len"]) == ("lerobot", 7, 5)
    assert meta["extra"]["lerobot_type"] == "act" and meta["needs_images"]
    assert meta["observation_spec"] == {
        "observation/state": {"shape": [8], "dtype": "float32"},
        "observation/image": {"shape": [IMAGE, IMAGE, 3], "dtype": "uint8"},
        "observation/wrist_image": {"shape": [IMAGE, IMAGE, 3], "dtype": "uint8"},
    }
    diffusion = httpx.get(f"{BASE}/diffusion/v1/policies/lerobot/metadata").json()
    # n_obs_steps 2: an observation history per episode, so one action per request (episode_state.py)
    assert (diffusion["extra"]["lerobot_type"], diffusion["chunk_len"], diffusion["episode_memory"]) == (
        "diffusion", 1, True)


@pytest.mark.parametrize("kind", ["act", "diffusion"])
def test_concurrent_clients_are_batched_and_match_lerobot_inference(served, lerobot_env, kind: str) -> None:
    reference_task, ray = lerobot_env
    prefix = "" if kind == "act" else "/diffusion"
    observations = _observations(24, seed=1)
    served[kind].reset_stats.remote().result()
    answers = _post_all(f"{BASE}{prefix}/v1/policies/lerobot/infer", observations)
    assert [r.status_code for r in answers] == [200] * 24
    actions = np.stack([msgpack_numpy.unpackb(r.content)["actions"] for r in answers])
    # Diffusion's requests carry no episode id: each is an episode's first step, answered with its action.
    assert actions.shape == (24, 5 if kind == "act" else 1, 7) and actions.dtype == np.float32
    stats = served[kind].get_stats.remote().result()
    assert stats["max_batch_size_seen"] > 1  # requests of different clients shared one LeRobot call
    # LeRobot's own path (select_action on one policy instance, the whole set as one batch) on the same
    # inputs. Diffusion compares too: both sides start from the same seeded noise (DDIM is deterministic).
    ref = ray.get(reference_task.remote(served_dir(served[kind]), _stacked(observations)), timeout=600)
    np.testing.assert_allclose(actions[:, 0], ref["first"], rtol=1e-4, atol=1e-4)
    if kind == "act":
        np.testing.assert_allclose(actions, ref["chunk"], rtol=1e-4, atol=1e-4)


def served_dir(handle) -> str:
    return handle.metadata.remote().result()["extra"]["pretrained_dir"]


def test_openpi_websocket_client_drives_the_lerobot_replica(served) -> None:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy(f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/lerobot/ws")
    assert client.get_server_metadata()["extra"]["lerobot_type"] == "act"
    obs = _observations(1, seed=2)[0]
    first = client.infer(obs)["actions"]
    assert first.shape == (5, 7)
    np.testing.assert_allclose(client.infer(obs)["actions"], first, rtol=1e-5)  # stateless across calls
    with pytest.raises(RuntimeError, match="Error in inference server"):
        client.infer({**obs, "observation/image": np.zeros((16, 16, 3), np.uint8)})


def test_a_bad_request_fails_alone(served) -> None:
    good = _observations(12, seed=3)
    bad = {**good[0], "observation/wrist_image": np.zeros((IMAGE, IMAGE), np.uint8)}
    missing = {k: v for k, v in good[1].items() if k != "observation/image"}
    answers = _post_all(f"{BASE}/v1/policies/lerobot/infer", good[:6] + [bad, missing] + good[6:])
    codes = [r.status_code for r in answers]
    assert codes == [200] * 6 + [400, 400] + [200] * 6
    assert "observation/wrist_image" in msgpack_numpy.unpackb(answers[6].content)["error"]
    assert "observation/image" in msgpack_numpy.unpackb(answers[7].content)["error"]


def _rename_tensor(weights: Path, old: str, new: str) -> None:
    """Renames one tensor in a safetensors file's JSON header (the data bytes stay as they are)."""
    import json
    import struct

    raw = weights.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    header[new] = header.pop(old)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    weights.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size:])


def test_weights_lerobot_leaves_random_are_refused_naming_the_tensor(pretrained, tmp_path: Path) -> None:
    import shutil

    import ray

    from gauntlet.policies.lerobot.untrained_checkpoints import weights_problem

    problem = ray.remote(num_cpus=0.5, max_retries=0, runtime_env=runtime_env_for("lerobot"))(weights_problem)
    assert ray.get(problem.remote(pretrained["act"]), timeout=600) == ""
    # What lerobot 0.6.1's pi0/pi0.5 loader returns when loading fails: the random initialisation.
    fallback = ray.get(problem.remote(pretrained["act"], as_fallback=True), timeout=600)
    assert "values differ from the file's" in fallback and "model.safetensors" in fallback
    # A tensor the model has but the file lacks: LeRobot's strict=False load keeps it random.
    broken = tmp_path / "act"
    shutil.copytree(pretrained["act"], broken)
    dropped = "model.action_head.weight"
    _rename_tensor(broken / "model.safetensors", dropped, "model.action_head_renamed.weight")
    partial = ray.get(problem.remote(str(broken)), timeout=600)
    assert dropped in partial and "no weights in the file" in partial
    # The pi family's streamed load: a fresh model filled from the file holds every value of it, and
    # a file tensor the model has no place for is refused by name.
    assert ray.get(problem.remote(pretrained["act"], streamed=True), timeout=600) == ""
    misplaced = ray.get(problem.remote(str(broken), streamed=True), timeout=600)
    assert "model.action_head_renamed.weight" in misplaced and "no tensor of this name" in misplaced


def test_gauntlet_eval_runs_a_lerobot_policy_end_to_end(served, pretrained: dict[str, str], tmp_path: Path) -> None:
    import pandas as pd
    from ray import serve

    from gauntlet.platform.cli import main as cli
    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval
    from gauntlet.runtime.config_args import parse_config

    serve.delete(DIFFUSION_APP)  # frees its CPU for the rollout actors
    scenes = tmp_path / "scenes"
    assert cli(["scenes", "generate", "--out", str(scenes), "--tasks", "lift", "--variants", "D0",
                "--error-types", "object_push", "--workers", "1", "--no-validate"]) == 0
    run = tmp_path / "run"
    cfg = parse_config(EvalConfig, ["--scenes", str(scenes), "--policy", f"lerobot={pretrained['act']}",
                                    "--out", str(run), "--actors", "1", "--horizon", "20", "--max-batch-size", "4"],
                       "gauntlet eval", "")
    summary = run_eval(cfg)
    frame = pd.read_parquet(run / "results.parquet")
    assert summary["problems"] == [] and len(frame) == summary["total"] > 0
    assert (frame["policy"] == "lerobot").all() and not frame["skipped"].any()
    assert (frame["inference_calls"] > 0).all()
