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


def test_a_taken_ws_port_fails_the_start_naming_it(ray_session) -> None:
    """Replica rank i listens on exactly --ws-port + i: with that port held by another process,
    `gauntlet serve` exits 1 naming it (Serve's retries end in DEPLOY_FAILED), and the squatter never
    receives a connection."""
    import socket

    from ray import serve

    from gauntlet.deployments.app import APP_NAME

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port + 1))  # rank 1's port
    squatter.listen()
    squatter.settimeout(0.1)
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gauntlet.platform.cli", "serve", "--policy", "random", "--replicas", "2",
             "--http-port", str(PORT + 1), "--grpc-port", "0", "--ws-port", str(port)],
            env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
        verdict = [line for line in proc.stderr.splitlines() if line.startswith("gauntlet serve: ")]
        assert verdict == [f"gauntlet serve: deploying 'gauntlet' failed: WebSocketPortInUse: ws_port: 127.0.0.1:"
                           f"{port + 1} (--ws-port {port} + replica rank 1) is already in use by another process; "
                           "free it or choose another --ws-port"], proc.stderr[-3000:]
        with pytest.raises(TimeoutError):
            squatter.accept()  # nothing connected to it
        assert APP_NAME not in serve.status().applications  # the failed app was not left behind
    finally:
        squatter.close()
        serve.shutdown()
