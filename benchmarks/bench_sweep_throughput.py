"""Throughput sweep: what the tuned loader configuration gains over LoaderConfig's defaults, and what
the ladder costs against the full grid.

    .venv/bin/python benchmarks/bench_sweep_throughput.py [--episodes 20] [--length 50] [--image-size 32]
                                                          [--measure-s 1.5]

Builds a dataset with two cameras in a temporary directory (not timed), runs `gauntlet sweep
throughput --target loader` as a grid and as a ladder over the same knobs on an embedded local Ray,
then re-measures, in the same process and one after another, the loader with LoaderConfig's
defaults for the swept knobs (the baseline), the grid's recommendation and the ladder's. Prints
samples/s, the ratio to the baseline, and how many trials each sweep needed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np

from gauntlet.platform.sweeps import throughput as sweep_throughput
from gauntlet.platform.sweeps.search import GridPlan, LadderPlan, summarise_plan
from gauntlet.platform.sweeps.throughput_trials import RealLoaderFactory, measure_loader
from gauntlet.runtime.config_args import parse_config

KNOBS = ("num_workers=1,2", "prefetch_depth=2,4", "decode_workers=1,2", "batch_size=32,64")


def build_dataset(root: Path, episodes: int, length: int, size: int) -> Path:
    from gauntlet.data.dataset_format import DatasetWriter

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    with DatasetWriter(root, source={"kind": "synthetic"}) as writer:
        for ep in range(episodes):
            t = np.arange(length)[:, None, None]
            base = (128 + 60 * np.sin((xx[None] + 2 * t + ep) / 9.0) + 40 * np.cos(yy[None] / 7.0)).clip(0, 255)
            img = np.repeat(base[..., None], 3, axis=3).astype(np.uint8)  # smooth, render-like: compresses like one
            writer.add_episode(rng.normal(size=(length, 8)).astype(np.float32),
                               rng.normal(size=(length, 7)).astype(np.float32), task="lift", variant="D0",
                               prompt="lift the cube", success=True, images={"agentview": img, "wrist": img[:, ::-1]},
                               seed=ep)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--measure-s", type=float, default=1.5)
    args = parser.parse_args()

    import ray

    from gauntlet.data.loader import LoaderConfig

    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_dataset(Path(tmp) / "ds", args.episodes, args.length, args.image_size)
        print(f"dataset: {args.episodes} episodes x {args.length} frames, two {args.image_size}px cameras", flush=True)
        from gauntlet.runtime.ray_session import init_local_ray

        init_local_ray("bench_sweep_throughput", log_to_driver=False)  # loopback listeners, token auth
        results = {}
        try:
            for mode in ("grid", "ladder"):
                config = parse_config(sweep_throughput.SweepThroughputConfig, [
                    "--target", "loader", "--dataset", str(dataset), "--mode", mode, "--knobs", *KNOBS,
                    "--measure-s", str(args.measure_s), "--out", str(Path(tmp) / mode)], "bench", "")
                knobs = sweep_throughput.knobs_of(config)
                plan: GridPlan | LadderPlan = sweep_throughput.plan_of(config, knobs)
                trials = sweep_throughput.run_sweep(config, sweep_throughput.target_of(config), plan)
                results[mode] = (summarise_plan(plan).recommended, len(trials))
        finally:
            ray.shutdown()

        defaults = {f.name: f.default for f in fields(LoaderConfig) if f.name in results["grid"][0]}
        factory = RealLoaderFactory(str(dataset))
        rows = [("LoaderConfig defaults (baseline)", defaults, 0)]
        rows += [(f"{mode} recommendation", knobs, n) for mode, (knobs, n) in results.items()]
        measured = [(name, knobs, n, measure_loader(factory, knobs, 3, args.measure_s)["samples_per_s"])
                    for name, knobs, n in rows]
    base = measured[0][3]
    print(f"\n{'configuration':<34} {'knobs':<58} {'trials':>6} {'samples/s':>10} {'ratio':>7}")
    for name, knobs, n, rate in measured:
        desc = " ".join(f"{k}={v}" for k, v in knobs.items())
        print(f"{name:<34} {desc:<58} {n or '-':>6} {rate:>10.0f} {rate / base:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
