"""`gauntlet train` across nodes, each test in its own Ray cluster: a `ray.cluster_utils.Cluster` that
loses a node mid-run (scripts/node_loss_train.py), and the Slurm launcher run end to end on this machine
with two raylets and no Slurm (scripts/slurm/ray_on_slurm.sh)."""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gauntlet.platform.train.driver import run_train

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, write_demo_dataset: Callable[..., Path]) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("cluster_train") / "ds")


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment without the test session's cluster, with a token file of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "auth" / "token")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _attempts(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A rank's digest rows split by worker process, in the order the processes ran."""
    attempts: list[list[dict[str, Any]]] = []
    for row in rows:
        if not attempts or attempts[-1][0]["pid"] != row["pid"]:
            attempts.append([])
        attempts[-1].append(row)
    return attempts


def test_jax_workers_hold_equal_parameters_after_every_step(ray_session, dataset: Path, tmp_path: Path,
                                                            train_config: Callable[..., Any]) -> None:
    """The VLA on JaxTrainer, two workers: --param-digests shows different batches and equal weights."""
    out = tmp_path / "vla"
    run_train(train_config(dataset, out, mode="full", steps=3, workers=2, param_digests=True, checkpoint_every=3))
    digests = [_jsonl(out / "train" / "workers" / f"rank{r}.digests.jsonl") for r in (0, 1)]
    assert [r["step"] for r in digests[0]] == [r["step"] for r in digests[1]] == [1, 2, 3]
    for a, b in zip(*digests, strict=True):
        assert a["batch"] != b["batch"] and a["params"] == b["params"], a["step"]
    assert len({r["params"] for r in digests[0]}) == 3, "the weights change every step"


@pytest.mark.slow
def test_data_parallel_training_across_nodes_survives_losing_a_node(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "tests/platform/train/scripts/node_loss_train.py"), str(dataset),
                           str(out)], capture_output=True, text=True, timeout=900, env=_clean_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith('{"summary"')))
    assert result["auth"] and result["node_ips"] == ["127.0.0.1"], "token auth on, every node on loopback"
    assert len(result["removed"]) == 1, "the node of rank 1 was removed mid-run"
    removed = result["removed"][0]
    assert result["summary"]["steps"] == 40

    # The run finished every step once, and the new worker group continued from a checkpoint, not from 0.
    train = out / "train"
    rows = _jsonl(train / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 41))
    resumed = [r["step"] for r in rows if r.get("resumed")]
    assert len(resumed) == 1 and resumed[0] > 1 and (resumed[0] - 1) % 4 == 0, resumed

    ranks = [_attempts(_jsonl(train / "workers" / f"rank{r}.digests.jsonl")) for r in (0, 1)]
    assert [len(a) for a in ranks] == [2, 2], "each rank ran in two processes: before and after the node loss"
    for group, (rank0, rank1) in enumerate(zip(*ranks, strict=True)):  # the two ranks of one worker group
        # One worker per node, on two nodes: the worker group really spans nodes.
        assert rank0[0]["node_id"] != rank1[0]["node_id"]
        steps0, steps1 = [r["step"] for r in rank0], [r["step"] for r in rank1]
        # The node can go between a step's gradient all-reduce and its digest line: in the interrupted
        # group one rank may have written one step more than the other, never a different one.
        common = min(len(steps0), len(steps1))
        assert steps0[:common] == steps1[:common] and len(steps0) - len(steps1) in ((-1, 0, 1) if group == 0 else (0,))
        for a, b in zip(rank0[:common], rank1[:common], strict=True):
            # Different data on each rank, the same parameters after every step: gradients are synchronised.
            assert a["batch"] != b["batch"] and a["params"] == b["params"], a["step"]
    (first, second), (first1, second1) = ranks
    assert first1[0]["node_id"] == removed, "the removed node hosted rank 1"
    assert removed not in {second[0]["node_id"], second1[0]["node_id"]}, "the new group runs on the remaining nodes"
    assert second[0]["step"] == resumed[0]
    # Parameters move every step, and the new group repeats the steps it redoes bit for bit.
    assert len({r["params"] for r in first + second}) == len({r["step"] for r in first + second})
    redone = {r["step"]: r["params"] for r in first if r["step"] >= resumed[0]}
    assert redone and all(redone[r["step"]] == r["params"] for r in second if r["step"] in redone)


def _free_block(size: int) -> int:
    """The first port of `size` consecutive ports free on every interface now (Ray binds the routable one)."""
    for _ in range(200):
        base = random.randrange(20000, 30000, 10)
        socks = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {size} consecutive free ports")


@pytest.mark.slow
def test_slurm_launcher_runs_train_as_a_ray_job_on_two_raylets(dataset: Path, tmp_path: Path, free_ports,
                                                                generate_scenes) -> None:
    """scripts/slurm/ray_on_slurm.sh with no Slurm: two raylets on this machine (GAUNTLET_SRUN=local), a
    two-worker `gauntlet train` spread over them, a small `gauntlet eval`, then a probe job; Ray stopped
    when the script ends."""
    scenes = generate_scenes(tmp_path / "scenes", variants="D0", error_types="drop", workers=1)
    gcs_port, dash_port = free_ports(2)
    job_dir, out = tmp_path / "job", tmp_path / "bc"
    env = _clean_env(tmp_path)
    env.pop("RAY_AUTH_TOKEN_PATH")  # the launcher makes the job's own token
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(GAUNTLET_SRUN="local", GAUNTLET_SLURM_NODES="localhost,localhost", GAUNTLET_RAY_JOB_DIR=str(job_dir),
               GAUNTLET_RAY_PORT=str(gcs_port), GAUNTLET_DASHBOARD_PORT=str(dash_port),
               GAUNTLET_RAY_PORT_BASE=str(_free_block(20)), GAUNTLET_NODE_CPUS="1", GAUNTLET_PYTHON=sys.executable,
               GAUNTLET_WAIT_S="240")
    train = ["gauntlet", "train", "--dataset", str(dataset), "--policy", "bc_rnn", "--mode", "full", "--out", str(out),
             "--steps", "4", "--batch-size", "8", "--workers", "2", "--placement", "SPREAD", "--param-digests",
             "--checkpoint-every", "2", "--cpus-per-worker", "1", "--loader-workers", "1", "--decode-workers", "1",
             "--prefetch-depth", "2"]
    run = tmp_path / "run"
    evaluate = ["gauntlet", "eval", "--scenes", str(scenes), "--policy", "random", "--out", str(run), "--actors", "1",
                "--horizon", "10"]
    probe = ["python", "tests/platform/train/scripts/cluster_probe.py", str(dash_port)]
    proc = subprocess.run([str(ROOT / "scripts/slurm/ray_on_slurm.sh"), "--", *train, "--", *evaluate, "--", *probe],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text()[-2000:] for p in sorted(job_dir.glob("node*.log")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    assert "[train] done: 4 steps" in proc.stdout, "the train job's log streams back"
    from gauntlet.platform.report.load import load_results

    assert len(load_results(run)) == 1, "the eval job ran its one scene"
    assert "2/2 nodes alive" in proc.stderr

    # Token auth on: a private token, and the job API refuses a request without it.
    token = job_dir / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(job_dir.stat().st_mode) == 0o700
    seen = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"probe"')))["probe"]
    assert seen["nodes"] == 2 and seen["token_auth"], seen
    assert seen["without_token"] == 401 and seen["with_token"] == 200, seen

    # The two training workers ran on the two raylets, and stayed in sync.
    assert json.loads((out / "train" / "summary.json").read_text())["steps"] == 4
    ranks = [json.loads((out / "train" / "workers" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["node_id"] != ranks[1]["node_id"]
    digests = [_jsonl(out / "train" / "workers" / f"rank{r}.digests.jsonl") for r in (0, 1)]
    assert [r["params"] for r in digests[0]] == [r["params"] for r in digests[1]] and len(digests[0]) == 4

    # Ray is stopped: the head's GCS port no longer accepts connections.
    with pytest.raises(OSError):
        socket.create_connection((seen["node_ips"][0], gcs_port), timeout=5).close()
