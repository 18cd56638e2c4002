"""Env stepping speed: no rendering vs lazy rendering (chunk length H) vs rendering every step,
next to raw `mj_step`/s on the same model, so this machine's physics ceiling is on record.

    .venv/bin/python benchmarks/bench_env_steps.py [--task lift] [--steps 400] [--chunk 8] [--image-size 128]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="lift")
    parser.add_argument("--steps", type=int, default=400, help="env steps per row")
    parser.add_argument("--chunk", type=int, default=8, help="action-chunk length H for the lazy row")
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()

    import mujoco

    from gauntlet.envs.env import make_env

    env = make_env(args.task, "D0", image_size=args.image_size)
    substeps = int(round(env.raw.control_timestep / env.raw.model_timestep))
    actions = np.random.default_rng(0).uniform(-0.3, 0.3, size=(args.steps, 7))

    m, d = env.sim.model._model, env.sim.data._data
    env.reset(0)
    n_raw = args.steps * substeps
    t = time.perf_counter()
    for _ in range(n_raw):
        mujoco.mj_step(m, d)
    raw_rate = n_raw / (time.perf_counter() - t)

    def run(render_every: int | None) -> tuple[float, int]:
        env.reset(0)
        renders0 = env.counters.renders
        t = time.perf_counter()
        for i, a in enumerate(actions):
            if render_every is not None and i % render_every == 0:
                env.observe(images=True)
            env.step(a)
        return args.steps / (time.perf_counter() - t), env.counters.renders - renders0

    rows = [
        ("raw mj_step (physics only)", raw_rate, None, f"= {raw_rate / substeps:.0f} env-step equivalents/s"),
    ]
    for label, every in (("env, no rendering", None), (f"env, lazy rendering (H={args.chunk})", args.chunk),
                         ("env, render every step", 1)):
        rate, renders = run(every)
        rows.append((label, rate, renders, ""))
    print(f"task={args.task} image={args.image_size}px cameras={len(env.config.cameras)} "
          f"substeps/env-step={substeps} steps/row={args.steps}", flush=True)
    print(f"{'row':<36}{'rate (/s)':>12}{'images':>9}", flush=True)
    for label, rate, renders, note in rows:
        print(f"{label:<36}{rate:>12.1f}{'' if renders is None else renders:>9}  {note}", flush=True)
    no_render, lazy, every = rows[1][1], rows[2][1], rows[3][1]
    print(f"\nlazy (H={args.chunk}) / render-every-step: {lazy / every:.2f}x", flush=True)
    print(f"no-render / lazy: {no_render / lazy:.2f}x;  env / physics ceiling: "
          f"{no_render / (raw_rate / substeps):.2f}", flush=True)


if __name__ == "__main__":
    main()
