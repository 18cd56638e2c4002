"""`gauntlet serve` as a real process joining the test session's Ray cluster via RAY_ADDRESS."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

PORT = 18423


def test_gauntlet_serve_process_answers_http(ray_session) -> None:
    from ray import serve

    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gauntlet.platform.cli", "serve", "--policy", "random",
         "--http-port", str(PORT), "--grpc-port", "0", "--max-batch-size", "4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"gauntlet serve exited: {proc.stdout.read()[-3000:]}")
            time.sleep(1)
        else:
            pytest.fail("gauntlet serve did not come up within 120 s")
        r = httpx.post(f"http://127.0.0.1:{PORT}/v1/policies/random/infer", json={"observation/state": [0.0] * 8})
        assert r.status_code == 200 and len(r.json()["actions"]) == 8
        meta = httpx.get(f"http://127.0.0.1:{PORT}/v1/policies/random/metadata").json()
        assert meta["serving"]["max_batch_size"] == 4
    finally:
        proc.terminate()
        proc.wait(30)
        serve.shutdown()
