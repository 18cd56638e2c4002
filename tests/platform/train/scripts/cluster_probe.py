"""Run as a Ray job by test_train_cluster.py's Slurm test: what the job sees of its cluster, as one JSON
line {"probe": {...}}: the alive nodes' addresses, the token-auth mode, and the job API's answer to a
request without the token and with it."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import ray
from ray._raylet import AuthenticationMode, get_authentication_mode


def http_status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def main(dashboard_port: str) -> None:
    ray.init(log_to_driver=False)  # RAY_ADDRESS: the cluster the job runs in
    nodes = [n for n in ray.nodes() if n["Alive"]]
    url = f"http://127.0.0.1:{dashboard_port}/api/jobs/"
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    probe = {"nodes": len(nodes), "node_ips": sorted(n["NodeManagerAddress"] for n in nodes),
             "token_auth": get_authentication_mode() == AuthenticationMode.TOKEN,
             "without_token": http_status(url, {}), "with_token": http_status(url, {"Authorization": f"Bearer {token}"})}
    print(json.dumps({"probe": probe}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
