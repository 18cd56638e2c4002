"""SmolVLA, pi0 and pi0.5 on Gauntlet's batched replicas, in lerobot 0.6.1's own Ray runtime_env.

Each family is randomly initialised at the smallest configuration lerobot 0.6.1 runs, with its
tokenizer (and SmolVLA's VLM config and processor) written locally by `vla_checkpoints.py` (no model
hub), saved with `save_pretrained` with its processors; then loaded by Gauntlet through LeRobot's own
loading code, served to concurrent clients (one LeRobot call per batch), compared with LeRobot's own
`predict_action_chunk` on the same inputs and the same noise, and evaluated with `gauntlet eval`.

A pi0/pi0.5 is 4.0 B parameters however configured (0.6.1 hard-codes PaliGemma gemma_2b): bfloat16,
8.9 GB on disk, ~10 GB of RAM while built or loaded. So one exists at a time: the build task (which
also computes LeRobot's reference answer on the model it built) exits before the replica loads, and
the served app is deleted before `gauntlet eval` deploys its own.
"""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import APP_NAME, PolicyServing, deployment_name, start_serve
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.registry import PolicyRef, runtime_env_for

pytestmark = pytest.mark.slow

IMAGE = 32  # px, what Gauntlet's cameras send; SmolVLA's tiny VLM takes 32 px, the pi family pads to 56
PROMPTS = ("lift the cube", "stack the red block on the green block", "open the drawer")
MSGPACK = {"content-type": "application/msgpack"}
# Requests per family and their clients: enough to form batches > 1; few, since a pi0 request costs seconds.
REQUESTS = {"smolvla": 16, "pi0": 6, "pi05": 6}
# float32 SmolVLA: the same code on the same weights; only the batch composition differs (BLAS blocking).
# bfloat16 pi family: a bfloat16 matmul rounds to 8 mantissa bits (2^-8 relative), and its result for a
# row depends on which rows share the call: measured for pi0, the same 6 requests as one batch and as
# batches of 1 + 2 + 3 differ by up to 1.3e-2 (actions up to 3.5), while a wrong input, noise or
# weight moves them by O(1). Gauntlet's adapter and LeRobot's own path on the same batch: 0.
TOLERANCE = {"smolvla": 1e-4, "pi0": 5e-2, "pi05": 5e-2}
# RAM a pi-family case needs free, below Ray's memory monitor's kill line: the build peaks at 10.1 GB,
# the replica's streamed load at 9.4 GB of anonymous memory (benchmarks/measure_vla_load.py).
PI_FREE_RAM_GB = 12.0


def _free_ram_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")  # not Linux: let the build try


def _observations(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"observation/state": rng.normal(size=8).astype(np.float32),
             "observation/image": rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
             "observation/wrist_image": rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
             "prompt": PROMPTS[i % len(PROMPTS)]} for i in range(count)]


def _stacked(observations: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([o[k] for o in observations]) for k in observations[0]}


def _build(ray, kind: str, out: Path, observations: list[dict]) -> dict:
    """The checkpoint and LeRobot's own answer to `observations`, from a task whose process exits."""
    from gauntlet.policies.lerobot.vla_checkpoints import save_random_vla

    # max_calls=1: the process exits, its 9 GB with it; max_retries=0: an OOM kill fails the test at once.
    task = ray.remote(num_cpus=0.5, max_calls=1, max_retries=0, runtime_env=runtime_env_for("lerobot"))(save_random_vla)
    began = time.perf_counter()
    built = ray.get(task.remote(kind, str(out), image_size=IMAGE, reference_batch=_stacked(observations)),
                    timeout=3600)
    print(f"[{kind}] built and answered in {time.perf_counter() - began:.0f}s", flush=True)
    return built


def _serve_and_ask(kind: str, path: str, observations: list[dict], port: int) -> tuple[np.ndarray, dict]:
    """Concurrent HTTP clients against one replica: (answers (N, n_action_steps, 7), replica stats)."""
    from ray import serve

    serve.shutdown()  # other modules' Serve instances listen on other ports
    spec = PolicyServing(PolicyRef("lerobot", path), max_batch_size=8, batch_wait_timeout_s=0.5, num_cpus=0.5,
                         runtime_env=runtime_env_for("lerobot"))
    began = time.perf_counter()
    start_serve([spec], http_port=port, grpc_port=None)
    print(f"[{kind}] replica up in {time.perf_counter() - began:.0f}s", flush=True)
    try:
        handle = serve.get_deployment_handle(deployment_name("lerobot"), app_name=APP_NAME)
        meta = httpx.get(f"http://127.0.0.1:{port}/v1/policies/lerobot/metadata").json()
        assert meta["extra"]["lerobot_type"] == kind and meta["observation_spec"]["prompt"]["dtype"] == "str"
        handle.reset_stats.remote().result()
        url = f"http://127.0.0.1:{port}/v1/policies/lerobot/infer"
        began = time.perf_counter()
        with httpx.Client(timeout=900) as client, cf.ThreadPoolExecutor(len(observations)) as pool:
            answers = list(pool.map(
                lambda o: client.post(url, content=msgpack_numpy.packb(o), headers=MSGPACK), observations))
        print(f"[{kind}] {len(observations)} concurrent requests in {time.perf_counter() - began:.0f}s", flush=True)
        assert [r.status_code for r in answers] == [200] * len(observations), answers[0].content[:300]
        stats = handle.get_stats.remote().result()
        return np.stack([msgpack_numpy.unpackb(r.content)["actions"] for r in answers]), stats
    finally:
        serve.shutdown()  # a pi-family replica holds 9 GB: gone before the eval deploys its own


def _eval(kind: str, path: str, scenes: Path, out: Path) -> None:
    import pandas as pd

    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval
    from gauntlet.runtime.config_args import parse_config

    cfg = parse_config(EvalConfig, ["--scenes", str(scenes), "--policy", f"lerobot={path}", "--out", str(out),
                                    "--actors", "1", "--envs-per-actor", "2", "--horizon", "8", "--limit", "2",
                                    "--max-batch-size", "4"], "gauntlet eval", "")
    began = time.perf_counter()
    summary = run_eval(cfg)
    print(f"[{kind}] gauntlet eval: {summary['total']} episode(s) in {time.perf_counter() - began:.0f}s", flush=True)
    frame = pd.read_parquet(out / "results.parquet")
    assert summary["problems"] == [] and len(frame) == summary["total"] > 0
    assert (frame["policy"] == "lerobot").all() and not frame["skipped"].any()
    assert (frame["inference_calls"] > 0).all()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gauntlet.platform.cli import main as cli

    out = tmp_path_factory.mktemp("vla_scenes") / "scenes"
    assert cli(["scenes", "generate", "--out", str(out), "--tasks", "lift", "--variants", "D0",
                "--error-types", "object_push", "--workers", "1", "--no-validate"]) == 0
    return out


@pytest.mark.parametrize("kind", ["smolvla", "pi0", "pi05"])
def test_vla_family_is_served_batched_equal_to_lerobot_and_evaluated(
        ray_session, scenes: Path, free_ports, tmp_path: Path, kind: str) -> None:
    if kind != "smolvla" and _free_ram_gb() < PI_FREE_RAM_GB:
        pytest.skip(f"{kind} needs {PI_FREE_RAM_GB:.0f} GB of free RAM to build and load its 4.0 B "
                    f"parameters; {_free_ram_gb():.1f} GB free")
    observations = _observations(REQUESTS[kind], seed=11)
    built = _build(ray_session, kind, tmp_path / kind, observations)
    try:
        path = built["path"]
        assert (Path(path) / "tokenizer").is_dir() or (Path(path) / "vlm").is_dir()  # nothing from a hub
        actions, stats = _serve_and_ask(kind, path, observations, free_ports(1)[0])
        assert actions.shape == built["reference"].shape == (len(observations), 4, 7)
        assert stats["max_batch_size_seen"] > 1  # requests of different clients shared one LeRobot call
        np.testing.assert_allclose(actions, built["reference"], rtol=0, atol=TOLERANCE[kind])
        _eval(kind, path, scenes, tmp_path / "run")
    finally:
        shutil.rmtree(tmp_path / kind, ignore_errors=True)  # 8.9 GB for a pi family checkpoint
