"""What a pi-family replica costs to load: LeRobot's own `from_pretrained` as it runs by default (the
model built and randomly initialised in float32, cast, then filled from the whole file read into
memory) against Gauntlet's `policy.load_model` (the initialisation skipped, the file's tensors
streamed in one at a time), what Gauntlet's replica runs.

One random checkpoint per family is built and saved first (`vla_checkpoints.save_random_vla`). Each
load then runs in a fresh process of LeRobot's replica environment (a Ray task with max_calls=1), so
its peak memory is its own. Prints seconds, peak RSS and peak anonymous memory (what Ray's memory
monitor counts) per load, the ratio, and whether the two paths hold the same tensors (every parameter
and buffer, hashed).

    .venv/bin/python benchmarks/measure_vla_load.py [--kinds pi0 pi05] [--threads 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


class AnonymousPeak:
    """The process's peak anonymous resident memory (RssAnon), sampled every 20 ms while in use: peak
    RSS (ru_maxrss) also counts the file's pages the loaders map, which the kernel reclaims at will
    and Ray's memory monitor does not count as used."""

    def __enter__(self) -> AnonymousPeak:
        import threading

        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gb(self) -> float:
        return self.peak_kb / 2**20


def build(kind: str, out: str) -> dict:
    import resource

    from gauntlet.policies.lerobot.vla_checkpoints import save_random_vla

    began = time.perf_counter()
    save_random_vla(kind, out, image_size=32)
    return {"seconds": time.perf_counter() - began,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def load(path: str, gauntlet: bool, threads: int) -> dict:
    """One load (LeRobot's default path, or Gauntlet's): seconds, peak RSS and a digest of every
    parameter and buffer, by name."""
    import hashlib
    import resource

    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    from gauntlet.policies.lerobot.policy import load_model

    torch.set_num_threads(threads)
    config = PreTrainedConfig.from_pretrained(path, local_files_only=True)
    began = time.perf_counter()
    with AnonymousPeak() as anonymous:
        if gauntlet:
            model = load_model(config, path)
        else:
            model = get_policy_class(config.type).from_pretrained(path, config=config, local_files_only=True)
    seconds = time.perf_counter() - began
    digest = hashlib.sha256()
    tensors = sorted([*model.named_parameters(), *model.named_buffers()], key=lambda item: item[0])
    for name, tensor in tensors:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return {"seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "anon_gb": anonymous.gb, "tensors": len(tensors), "digest": digest.hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["pi0"], choices=["pi0", "pi05", "smolvla"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads per load")
    parser.add_argument("--dir", default=None, help="where checkpoints are built (default: a temp dir; 9 GB each)")
    args = parser.parse_args()
    import ray

    from gauntlet.policies.lerobot.environment import runtime_env
    from gauntlet.runtime.ray_session import start_ray

    start_ray("measure_vla_load", log_to_driver=False)
    # max_calls=1: each call is a fresh process, so ru_maxrss is that call's peak alone.
    task_options = {"num_cpus": 0, "max_calls": 1, "max_retries": 0, "runtime_env": runtime_env()}
    build_task, load_task = ray.remote(**task_options)(build), ray.remote(**task_options)(load)
    root = Path(args.dir or tempfile.mkdtemp(prefix="vla-load-"))
    rows = []
    try:
        for kind in args.kinds:
            path = str(root / kind)
            built = ray.get(build_task.remote(kind, path))
            print(f"[{kind}] built and saved in {built['seconds']:.0f}s (peak {built['peak_gb']:.1f} GB)", flush=True)
            default = ray.get(load_task.remote(path, False, args.threads))
            print(f"[{kind}] LeRobot's default load: {default['seconds']:.1f}s", flush=True)
            ours = ray.get(load_task.remote(path, True, args.threads))
            print(f"[{kind}] Gauntlet's load: {ours['seconds']:.1f}s", flush=True)
            rows.append((kind, default, ours))
            shutil.rmtree(path, ignore_errors=True)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'family':<9}{'default s':>10}{'RSS GB':>8}{'anon GB':>9}{'Gauntlet s':>11}{'RSS GB':>8}"
          f"{'anon GB':>9}{'ratio':>8}  same tensors")
    for kind, default, ours in rows:
        same = default["digest"] == ours["digest"] and default["tensors"] == ours["tensors"]
        print(f"{kind:<9}{default['seconds']:>10.1f}{default['peak_gb']:>8.1f}{default['anon_gb']:>9.1f}"
              f"{ours['seconds']:>11.1f}{ours['peak_gb']:>8.1f}{ours['anon_gb']:>9.1f}"
              f"{default['seconds'] / ours['seconds']:>7.1f}x  {same} ({default['tensors']} tensors)", flush=True)


if __name__ == "__main__":
    main()
