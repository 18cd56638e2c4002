"""Run by test_eval_cluster.py in its own process: a 1-head + 3-worker `ray.cluster_utils.Cluster`,
an evaluation with rollout actors pinned to the workers, and one worker node removed mid-run."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster

from gauntlet.platform.eval.config import EvalConfig
from gauntlet.platform.eval.driver import run_eval
from gauntlet.runtime.config_args import parse_config


def nodes_that_ran_an_episode(run: str) -> set[str]:
    """Node-id prefixes of the rollout actors that have written a row (the `worker` column is
    "<node id[:8]>/<actor id[:8]>")."""
    parts = sorted(Path(run, "results").glob("part-*.parquet")) if Path(run, "results").exists() else []
    return {worker.split("/")[0] for part in parts for worker in pq.read_table(part, columns=["worker"])["worker"].to_pylist()}


def main(scenes: str, run: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1, resources={"rollout": 1}) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    cfg = parse_config(EvalConfig, ["--scenes", scenes, "--policy", "random", "--out", run, "--trials", "4",
                                    "--actors", "2", "--horizon", "150", "--write-every", "1",
                                    "--actor-resource", "rollout", "--ping-timeout-s", "20"], "eval", "")
    removed: list[str] = []

    def remover() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not removed:
            # The node of an actor that has finished an episode: it is created and has work queued, and
            # its calls fail at once. An actor still being created is declared dead only when Ray sees
            # its node's heartbeats stop (tens of seconds), by which time the other actor may have run
            # every item: removing that node would test nothing here.
            ran = nodes_that_ran_an_episode(run)
            for node in workers:
                if node.node_id[:8] in ran:
                    cluster.remove_node(node, allow_graceful=False)
                    removed.append(node.node_id)
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=remover, daemon=True)
    thread.start()
    summary = run_eval(cfg)
    thread.join(5)
    print(json.dumps({"summary": summary, "removed": removed}), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
