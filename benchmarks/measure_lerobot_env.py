"""What LeRobot's replica environment costs to start: seconds until a task in it answers, with uv's
cache cold (an empty cache directory) and warm (the same directory again, in a new Ray session, as a
later `gauntlet serve` or test session on the machine sees it), and the disk it takes.

Each start is its own process and its own embedded Ray session (Ray builds the environment once per
session). Prints seconds per start, the wheels downloaded into the cache and the environment's size
under the session directory.

    .venv/bin/python benchmarks/measure_lerobot_env.py [--release 0.6.1] [--cache DIR] [--skip-cold]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The child process: one Ray session, one task in the environment.
_START = """
import json, sys, time
import ray
from gauntlet.policies.lerobot.environment import runtime_env
from gauntlet.runtime.ray_session import start_ray

start_ray("measure_lerobot_env", log_to_driver=False)
began = time.perf_counter()

def version():
    import lerobot, torch, transformers
    return lerobot.__version__, torch.__version__, transformers.__version__

versions = ray.get(ray.remote(num_cpus=0, max_retries=0, runtime_env=runtime_env(sys.argv[1]))(version).remote())
seconds = time.perf_counter() - began
session = ray._private.worker._global_node.get_session_dir_path()
print(json.dumps({"seconds": seconds, "versions": versions, "session": session}), flush=True)
ray.shutdown()
"""


def _size_gb(path: Path) -> float:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=False).stdout
    return int(out.split()[0]) / 1e9 if out else 0.0


def start_once(release: str, cache: Path) -> dict:
    """One Ray session that starts the environment; its seconds, versions and disk use."""
    import json

    env = {**os.environ, "UV_CACHE_DIR": str(cache)}  # Ray's uv plugin runs uv with the raylet's env
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _START, release], env=env, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - began
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"the start failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    row = json.loads(lines[-1])
    row["wall"] = wall
    row["env_gb"] = _size_gb(Path(row["session"]) / "runtime_resources" / "uv")
    row["cache_gb"] = _size_gb(cache)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default=None, help="LeRobot release (default: environment.LEROBOT_VERSION)")
    parser.add_argument("--cache", default=None, help="uv cache dir to measure in (default: a new temp dir)")
    parser.add_argument("--skip-cold", action="store_true", help="only a warm start (the cache must be filled)")
    args = parser.parse_args()
    from gauntlet.policies.lerobot.environment import LEROBOT_VERSION

    release = args.release or LEROBOT_VERSION
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="uv-cache-"))
    rows = {}
    try:
        for name in (["warm"] if args.skip_cold else ["cold", "warm"]):
            print(f"[{name}] starting lerobot {release}'s environment (uv cache {cache})", flush=True)
            rows[name] = start_once(release, cache)
            print(f"[{name}] ready in {rows[name]['seconds']:.0f}s", flush=True)
    finally:
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)
    print(f"\nlerobot {release} replica environment (lerobot, torch, transformers: {rows[name]['versions']})")
    print(f"{'start':<8}{'ready s':>9}{'process s':>11}{'uv cache GB':>13}{'env GB':>9}")
    for name, row in rows.items():
        print(f"{name:<8}{row['seconds']:>9.0f}{row['wall']:>11.0f}{row['cache_gb']:>13.2f}{row['env_gb']:>9.2f}",
              flush=True)


if __name__ == "__main__":
    main()
