"""Run by test_eval_cluster.py in its own process: a 1-head + 3-worker `ray.cluster_utils.Cluster`,
an evaluation with rollout actors pinned to the workers, and one worker node removed mid-run."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import psutil
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from gauntlet.platform.eval.config import EvalConfig
from gauntlet.platform.eval.driver import run_eval
from gauntlet.runtime.config_args import parse_config


def actor_pids_under(pid: int) -> list[int]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c.pid for c in children if "RolloutActor" in " ".join(c.cmdline() or [])]


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
            done = len(list(Path(run, "results").glob("part-*.parquet"))) if Path(run, "results").exists() else 0
            if done >= 2:
                for node in workers:
                    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
                    if actor_pids_under(raylet):
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
