"""Env stepping speed: robosuite's own step vs Gauntlet's fast control path (both without rendering),
then lazy rendering (chunk length H) and rendering every step, next to raw `mj_step`/s on the same
model, so this machine's physics ceiling is on record.

    .venv/bin/python benchmarks/bench_env_steps.py [--task lift] [--steps 400] [--chunk 8] [--image-size 128]
                                                   [--repeats 3] [--profile]

Rows are timed interleaved, `--repeats` times each, and the best run of each is reported: on a shared
machine the best run is the one least disturbed by other processes. `--profile` adds where the fast
path's time goes (cProfile, by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="lift")
    parser.add_argument("--steps", type=int, default=400, help="env steps per row")
    parser.add_argument("--chunk", type=int, default=8, help="action-chunk length H for the lazy row")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the best is reported")
    parser.add_argument("--profile", action="store_true", help="also profile the fast path")
    args = parser.parse_args()

    import mujoco

    from gauntlet.envs.env import make_env

    env = make_env(args.task, "D0", image_size=args.image_size)  # fast path (the default)
    robosuite_env = make_env(args.task, "D0", image_size=args.image_size, fast_control=False)
    substeps = int(round(env.raw.control_timestep / env.raw.model_timestep))
    actions = np.random.default_rng(0).uniform(-0.3, 0.3, size=(args.steps, 7))
    m, d = env.sim.model._model, env.sim.data._data

    def physics() -> float:
        env.reset(0)
        t = time.perf_counter()
        for _ in range(args.steps * substeps):
            mujoco.mj_step(m, d)
        return args.steps * substeps / (time.perf_counter() - t)

    def run(e, render_every: int | None) -> float:  # noqa: ANN001 - a GauntletEnv
        e.reset(0)
        t = time.perf_counter()
        for i, a in enumerate(actions):
            if render_every is not None and i % render_every == 0:
                e.observe(images=True)
            e.step(a)
        return args.steps / (time.perf_counter() - t)

    cases = {
        "raw mj_step (physics only)": physics,
        "robosuite step (no render)": lambda: run(robosuite_env, None),
        "fast path (no render)": lambda: run(env, None),
        f"fast path, lazy render (H={args.chunk})": lambda: run(env, args.chunk),
        "fast path, render every step": lambda: run(env, 1),
    }
    run(env, 1)  # warm-up: numba kernels loaded, GL context created
    run(robosuite_env, None)
    best = dict.fromkeys(cases, 0.0)
    for _ in range(args.repeats):
        for label, case in cases.items():
            best[label] = max(best[label], case())

    ceiling = best["raw mj_step (physics only)"] / substeps  # env steps/s if control cost nothing
    print(f"task={args.task} image={args.image_size}px cameras={len(env.config.cameras)} "
          f"substeps/env-step={substeps} steps/row={args.steps} best of {args.repeats}", flush=True)
    print(f"{'row':<36}{'env steps/s':>12}{'of ceiling':>12}", flush=True)
    for label, rate in best.items():
        env_rate = ceiling if label.startswith("raw") else rate
        note = f"  ({rate:.0f} mj_step/s)" if label.startswith("raw") else ""
        print(f"{label:<36}{env_rate:>12.1f}{env_rate / ceiling:>12.2f}{note}", flush=True)
    fast, rs = best["fast path (no render)"], best["robosuite step (no render)"]
    lazy, every = best[f"fast path, lazy render (H={args.chunk})"], best["fast path, render every step"]
    print(f"\nfast / robosuite: {fast / rs:.2f}x;  fast / physics ceiling: {fast / ceiling:.2f};  "
          f"robosuite / ceiling: {rs / ceiling:.2f}", flush=True)
    print(f"lazy (H={args.chunk}) / render-every-step: {lazy / every:.2f}x;  no-render / lazy: {fast / lazy:.2f}x",
          flush=True)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(env, None)
        profiler.disable()
        print("\nfast path profile (own time):", flush=True)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
