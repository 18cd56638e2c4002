"""Scripted-expert success rates: N seeds per task x variant against the targets the data and
recovery pipelines rely on (>= 90 % on D0, >= 80 % on D1).

    .venv/bin/python benchmarks/bench_experts.py [--seeds 50] [--tasks lift,stack] [--variants D0,D1]

Prints one row per task x variant (success %, mean steps of all episodes, simulation steps/s) and
exits 1 if any row misses its target. Seeds are 0..N-1; each episode runs at most --horizon steps
and stops at its first success.
"""

from __future__ import annotations

import argparse
import sys
import time

from gauntlet.envs.env import make_env
from gauntlet.envs.experts import rollout_expert
from gauntlet.envs.tasks import TASKS, VARIANTS

TARGET_SUCCESS = {"D0": 0.90, "D1": 0.80}  # minimum success fraction per variant
DEFAULT_HORIZON = 400  # steps at 20 Hz = 20 s; the slowest task (square) needs ~150-200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=50, help="episodes (seeds 0..N-1) per task x variant")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    parser.add_argument("--horizon", type=int, default=DEFAULT_HORIZON, help="max control steps per episode")
    parser.add_argument("--verbose", action="store_true", help="print every failed seed")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    tasks = [t for t in args.tasks.split(",") if t]
    variants = [v for v in args.variants.split(",") if v]

    header = f"{'task':<16}{'variant':<9}{'success %':>10}{'target %':>10}{'mean steps':>12}{'steps/s':>10}"
    print(header, flush=True)
    print("-" * len(header), flush=True)
    missed = []
    for task in tasks:
        for variant in variants:
            target = TARGET_SUCCESS[variant]
            try:
                env = make_env(task, variant)
            except Exception as exc:  # noqa: BLE001 - a broken env is a missed row, not a crash
                print(
                    f"{task:<16}{variant:<9}{'ERROR':>10}{100 * target:>10.0f}   {type(exc).__name__}: {exc}",
                    flush=True,
                )
                missed.append((task, variant))
                continue
            successes = steps = 0
            failed: list[int] = []
            t0 = time.perf_counter()
            for seed in range(args.seeds):
                result = rollout_expert(env, seed, args.horizon)
                successes += result.success
                steps += result.steps
                if not result.success:
                    failed.append(seed)
            wall = time.perf_counter() - t0
            env.close()
            rate = successes / args.seeds
            print(
                f"{task:<16}{variant:<9}{100 * rate:>10.1f}{100 * target:>10.0f}"
                f"{steps / args.seeds:>12.1f}{steps / wall:>10.0f}",
                flush=True,
            )
            if args.verbose and failed:
                print(f"    failed seeds: {failed}", flush=True)
            if rate < target:
                missed.append((task, variant))
    if missed:
        print(f"targets missed: {', '.join(f'{t}/{v}' for t, v in missed)}", flush=True)
        return 1
    print("all targets met", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
