"""Multi-node and job-submission behaviour, each in its own Ray cluster started by the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from gauntlet.platform.eval.results import KEY

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def small_db(tmp_path_factory: pytest.TempPathFactory, generate_scenes) -> Path:
    return generate_scenes(tmp_path_factory.mktemp("cluster") / "scenes", variants="D0",
                           error_types="object_pose_perturb,object_push", workers=1)


@pytest.mark.slow
def test_worker_node_removed_mid_run_loses_no_items(small_db: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, str(ROOT / "tests/platform/eval/scripts/node_loss_eval.py"), str(small_db),
                          str(run)], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith('{"summary"')))
    assert result["removed"], "a worker node hosting a rollout actor should have been removed"
    assert result["summary"]["actors_replaced"] >= 1
    frame = pd.read_parquet(run / "results.parquet")
    assert len(frame) == 2 * 4 and not frame.duplicated(subset=list(KEY)).any()
    assert not frame["skipped"].any()
    # The removed node's actor had run episodes: its rows stay, and the rest ran on other actors.
    ran_on_removed = frame["worker"].str.startswith(result["removed"][0][:8])
    assert ran_on_removed.any() and not ran_on_removed.all()


@pytest.mark.slow
def test_ray_job_submit_end_to_end(small_db: Path, tmp_path: Path, free_ports) -> None:
    """`ray start --head` (its own cluster), then `ray job submit --working-dir . -- python -m ...`."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    # Ray 2.60 turns token auth on by itself when ~/.ray/auth_token exists; this throwaway
    # loopback-only cluster states its mode explicitly so the test does not depend on that file.
    env["RAY_AUTH_MODE"] = "disabled"
    gcs_port, dash_port, agent_port, agent_grpc, metrics = free_ports(5)
    # Every port explicit and free: the test session's own Ray already holds the default dashboard
    # agent port (52365), and a head whose agent cannot bind never accepts jobs.
    head = subprocess.Popen([f"{venv_bin}/ray", "start", "--head", "--block", f"--port={gcs_port}",
                             "--num-cpus=3", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dash_port}", f"--dashboard-agent-listen-port={agent_port}",
                             f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
                             "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run = tmp_path / "run"
    try:
        address = f"http://127.0.0.1:{dash_port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            probe = subprocess.run([f"{venv_bin}/ray", "job", "list", "--address", address],
                                   env=env, capture_output=True, text=True)
            if probe.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail("the Ray head did not come up")
        command = [f"{venv_bin}/ray", "job", "submit", "--address", address, "--working-dir", str(ROOT), "--",
                   "python", "-m", "gauntlet.platform.eval", "--scenes", str(small_db), "--policy", "scripted",
                   "--out", str(run), "--actors", "1", "--horizon", "60"]
        deadline = time.monotonic() + 180
        while True:
            submit = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
            # The job API answers before the head's dashboard agent is ready on a loaded machine.
            if "No available agent" not in submit.stderr + submit.stdout or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "[eval] finished" in submit.stdout  # the job's log streams back unbuffered
        frame = pd.read_parquet(run / "results.parquet")
        assert len(frame) == 2 and frame["success"].all()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
