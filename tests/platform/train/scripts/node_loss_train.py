"""Run by test_train_cluster.py in its own process: a `ray.cluster_utils.Cluster` of a CPU-less head and
three 1-CPU worker nodes (every listener on 127.0.0.1, token auth on, as `runtime/ray_session.py` hardens
an embedded Ray), a two-worker BC-RNN `gauntlet train` spread over two nodes with parameter digests on,
and the node of rank 1 removed once a checkpoint is registered and the run has moved past it.

Prints one JSON line: {"summary", "removed", "node_ips", "auth"}.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from gauntlet.platform.train.driver import TrainConfig, registered_checkpoint_steps, run_train
from gauntlet.runtime.ray_session import enable_token_auth, use_loopback_node_ip

# The GCS marks a node dead after health_check_failure_threshold missed checks (Ray's defaults: ~30 s,
# time a new worker group's placement may wait on the lost node); ~10 s here, still far above a busy
# 2-core host's stalls, so no live node is declared dead.
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 3000,
                 "health_check_failure_threshold": 10}


def remove_rank1_node(cluster: Cluster, nodes: list, train_dir: Path, removed: list[str]) -> None:
    """Removes the node of rank 1 once a checkpoint is registered and a later step is done: the new
    worker group must resume from that checkpoint and redo only the steps after it."""
    metrics, rank1 = train_dir / "metrics.jsonl", train_dir / "workers" / "rank1.json"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        if metrics.exists() and rank1.exists():
            lines = [line for line in metrics.read_text().splitlines() if line.strip()]
            registered = registered_checkpoint_steps(train_dir)
            if registered and lines and json.loads(lines[-1])["step"] > registered[-1]:
                node_id = json.loads(rank1.read_text())["node_id"]
                node = next(n for n in nodes if n.node_id == node_id)
                cluster.remove_node(node, allow_graceful=False)
                removed.append(node_id)
                return
        time.sleep(0.05)


def main(dataset: str, out: str) -> None:
    from ray._raylet import AuthenticationMode, get_authentication_mode

    enable_token_auth("test")
    use_loopback_node_ip()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": HEALTH_CHECKS})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    cfg = TrainConfig(dataset=dataset, out=out, policy="bc_rnn", mode="full", workers=2, placement="SPREAD",
                      param_digests=True, steps=40, batch_size=8, checkpoint_every=4, report_every=4, log_every=4,
                      warmup_steps=2, cpus_per_worker=1, max_failures=2, loader_workers=1, decode_workers=1,
                      prefetch_depth=2)
    removed: list[str] = []
    thread = threading.Thread(target=remove_rank1_node, args=(cluster, nodes, cfg.train_dir, removed), daemon=True)
    thread.start()
    summary = run_train(cfg)
    thread.join(5)
    report = {"summary": summary, "removed": removed, "node_ips": sorted({n["NodeManagerAddress"] for n in ray.nodes()}),
              "auth": get_authentication_mode() == AuthenticationMode.TOKEN}
    print(json.dumps(report, default=str), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
