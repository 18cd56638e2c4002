"""VLA fine-tuning: LoRA vs full (trainable parameters, memory, samples/s) and Ray Train's overhead.

    .venv/bin/python benchmarks/bench_train.py [--presets tiny,small] [--batch 8] [--ray-mode full]
                                               [--ray-workers 1,2] [--ray-steps 60] [--no-ray]

Part 1, LoRA vs full, in this process, per preset (--presets; default tiny and small at --batch 8):
  trainable parameters    `gauntlet.policies.vla.lora.param_counts` (full: every base parameter;
                          LoRA: the adapter only).
  planner                 `memory_plan.breakdown`, the per-device estimate `gauntlet train` checks
                          before any worker starts (params + grads + optimizer + activations).
  XLA                     the real jitted train step (`make_train_step`) lowered and compiled for
                          this batch; `compiled.memory_analysis()` gives argument, output, temp and
                          alias bytes, and peak = argument + output + temp - alias (the step does not
                          donate its state, so the old and the new state are both live). XLA's own
                          `peak_memory_in_bytes`, where this jax has it, is printed too; on CPU it
                          leaves out temp (it equals argument + output).
  samples/s               the compiled step run on one prepared batch after a warm-up step, for
                          --seconds per mode split into three rounds that alternate full and LoRA
                          (no data loading, no host-side batch preparation).
Then the LoRA/full ratios of each, and the planner's numbers alone for the `base` preset at batch 32
(shapes only, nothing compiled), the GPU-scale picture.

Part 2, `gauntlet train` on Ray Train (unless --no-ray): `run_train` with --ray-workers data-parallel
CPU workers on a synthetic dataset with images written to a temp dir (tiny preset, --ray-mode,
global batch --ray-batch, --ray-steps steps, a report every 20 steps, one checkpoint at the end).
From OUT/train/metrics.jsonl: steady-state samples/s in total and per worker (median over the steps
after the first --skip-steps, which hold the compile), the mean including report and checkpoint
barriers, and the workers' peak memory. The baseline is the same config trained by one plain
process with no Ray: a loop of host-side batch preparation + the jitted step + reading the loss
(what a worker does per step, minus the loader), at the global batch (what one process would do
alone) and at the per-worker batch (what each worker computes). Their ratio is the overhead of
Ray Train plus data parallelism (gradient all-reduce over Gloo, loader threads, CPU contention: on
a 2-core host two workers share the cores that the single process had to itself).

Everything runs on JAX's default backend (printed at the top, with --device-note appended); Ray
Train workers always run on CPU here, so their in-process baseline is taken on the CPU device too.
Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.keys import IMAGE_KEY, PROMPT_KEY, STATE_KEY, WRIST_IMAGE_KEY
from gauntlet.platform.train import memory_plan as mp

MiB = 1024**2
PROMPT = "pick up the red cube"


def fmt(n: float) -> str:
    return mp.fmt_bytes(n)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3g}x" if b else "n/a"


def raw_batch(config: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = config.image_size
    out = {
        STATE_KEY: rng.normal(size=(batch, config.state_dim)).astype(np.float32),
        IMAGE_KEY: rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8),
        PROMPT_KEY: np.array([PROMPT] * batch),
        "actions": np.tanh(rng.normal(size=(batch, config.chunk_len, config.action_dim))).astype(np.float32),
    }
    if config.num_cameras == 2:
        out[WRIST_IMAGE_KEY] = rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    return out


def optimizer() -> Any:
    """The worker's optimizer with `gauntlet train`'s defaults (clip 1.0, AdamW 1e-3, wd 1e-4)."""
    from gauntlet.policies.vla.train import make_optimizer

    return make_optimizer(learning_rate=1e-3, weight_decay=1e-4, clip_norm=1.0)


def train_state(policy: Any, mode: str, opt: Any) -> Any:
    from gauntlet.policies.vla.train import init_train_state

    variables: dict[str, Any] = {"params": policy.params}
    if mode == "lora":
        variables["lora"] = policy.init_adapter(0)
    return init_train_state(variables, mode, opt)


def tree_bytes(tree: Any) -> int:
    import jax

    return int(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree)))


def timed_rate(fn: Any, batch: int, seconds: float, min_steps: int = 3, max_steps: int = 500) -> tuple[float, int]:
    """(samples/s, steps) of `fn()` (one step, blocking) after two warm-up calls."""
    fn()
    fn()
    n, t0 = 0, time.perf_counter()
    while n < min_steps or (time.perf_counter() - t0 < seconds and n < max_steps):
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0), n


# ---------------------------------------------------------------------------------------------
# Part 1: LoRA vs full in this process


def compile_mode(policy: Any, mode: str, batch: int) -> dict[str, Any]:
    """Lower + compile the real train step for `mode`; the memory numbers and a blocking step."""
    import jax

    from gauntlet.policies.vla.lora import param_counts
    from gauntlet.policies.vla.train import make_train_step

    config = policy.config
    opt = optimizer()
    state = train_state(policy, mode, opt)
    x = policy.prepare_train_batch(raw_batch(config, batch), np.random.default_rng(0))
    plan = mp.breakdown(config, mode, batch, param_counts=param_counts(config))
    t0 = time.perf_counter()
    compiled = make_train_step(policy.model, opt).lower(state, x).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    get = (lambda k: int(getattr(ma, k, 0) or 0)) if ma is not None else (lambda k: 0)
    arg, out, temp, alias = (get(k) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                              "temp_size_in_bytes", "alias_size_in_bytes"))
    holder = {"state": state}

    def one() -> None:
        holder["state"], metrics = compiled(holder["state"], x)
        jax.block_until_ready(metrics["loss"])

    one()  # warm-up
    return {
        "mode": mode, "trainable": plan.trainable_params, "total_params": plan.total_params, "plan": plan,
        "opt_state_bytes": tree_bytes(state.opt_state), "xla_arg": arg, "xla_out": out, "xla_temp": temp,
        "xla_alias": alias, "xla_peak": arg + out + temp - alias, "xla_reported_peak": get("peak_memory_in_bytes"),
        "compile_s": compile_s, "step": one, "timed_steps": 0, "timed_s": 0.0,
    }


def run_modes(preset: str, batch: int, seconds: float, rounds: int = 3) -> list[dict[str, Any]]:
    """Both modes compiled, then timed in alternating rounds (a shared, noisy host drifts over
    time; alternating gives both modes the same conditions)."""
    from gauntlet.policies.vla.policy import VLAPolicy

    policy = VLAPolicy.create(preset)
    rows = []
    for mode in ("full", "lora"):
        print(f"  {preset}: compiling {mode} (batch {batch}) ...", flush=True)
        rows.append(compile_mode(policy, mode, batch))
    print(f"  {preset}: timing full and lora in {rounds} alternating rounds ...", flush=True)
    for _ in range(rounds):
        for r in rows:
            t0 = time.perf_counter()
            n = 0
            while n < 1 or (time.perf_counter() - t0 < seconds / rounds and n < 500):
                r["step"]()
                n += 1
            r["timed_steps"] += n
            r["timed_s"] += time.perf_counter() - t0
    for r in rows:
        r["samples_s"] = r["timed_steps"] * batch / r["timed_s"]
        del r["step"]
    return rows


def print_modes(preset: str, batch: int, rows: list[dict[str, Any]]) -> None:
    c = {r["mode"]: r for r in rows}
    full, lora = c["full"], c["lora"]
    print(f"\n== {preset} preset, batch {batch} per device: LoRA vs full ==")
    print(f"{'mode':<6}{'trainable':>13}{'params read':>13}{'plan grads+opt':>16}{'plan activ.':>13}"
          f"{'plan total':>13}{'XLA peak':>12}{'XLA temp':>12}{'opt state':>12}{'compile s':>11}{'samples/s':>11}")
    for r in (full, lora):
        p = r["plan"]
        print(f"{r['mode']:<6}{r['trainable']:>13,}{r['total_params']:>13,}{fmt(p.grads + p.optimizer):>16}"
              f"{fmt(p.activations):>13}{fmt(p.total):>13}{fmt(r['xla_peak']):>12}{fmt(r['xla_temp']):>12}"
              f"{fmt(r['opt_state_bytes']):>12}{r['compile_s']:>11.1f}{r['samples_s']:>11.1f}")
    for r in (full, lora):
        print(f"  {r['mode']:<4} XLA memory_analysis: argument {fmt(r['xla_arg'])} + output {fmt(r['xla_out'])} + "
              f"temp {fmt(r['xla_temp'])} - alias {fmt(r['xla_alias'])}"
              + (f" (XLA's own peak_memory_in_bytes: {fmt(r['xla_reported_peak'])})" if r["xla_reported_peak"] else "")
              + f"; planner/XLA = {r['plan'].total / max(r['xla_peak'], 1):.2f}; timed {r['timed_steps']} steps "
              f"in {r['timed_s']:.1f} s")
    pf, pl = full["plan"], lora["plan"]
    print(f"  LoRA/full: trainable params {ratio(lora['trainable'], full['trainable'])} "
          f"({lora['trainable'] / full['trainable'] * 100:.2f}%), planner grads+optimizer "
          f"{ratio(pl.grads + pl.optimizer, pf.grads + pf.optimizer)}, actual optimizer state "
          f"{ratio(lora['opt_state_bytes'], full['opt_state_bytes'])}, planner total {ratio(pl.total, pf.total)}, "
          f"XLA peak {ratio(lora['xla_peak'], full['xla_peak'])}, samples/s {ratio(lora['samples_s'], full['samples_s'])}")


def print_planner_only(preset: str, batch: int) -> None:
    from gauntlet.policies.vla.config import get_config
    from gauntlet.policies.vla.lora import param_counts

    config = get_config(preset)
    counts = param_counts(config)
    print(f"\n== {preset} preset, batch {batch} per device: planner only (shapes, nothing compiled; "
          f"compute {config.compute_dtype}, {config.image_size} px, {config.prefix_len} trunk tokens) ==")
    print(f"{'mode':<6}{'trainable':>14}{'params':>12}{'grads':>12}{'optimizer':>12}{'activations':>13}"
          f"{'total':>12}{'fits 24 GiB':>13}{'fits 80 GiB':>13}")
    rows = {}
    for mode in ("full", "lora"):
        b = mp.breakdown(config, mode, batch, param_counts=counts)
        rows[mode] = b
        fits = [("yes" if b.total <= gb * mp.GiB * (1 - mp.RESERVED_FRACTION) else "no") for gb in (24, 80)]
        print(f"{mode:<6}{b.trainable_params:>14,}{fmt(b.params):>12}{fmt(b.grads):>12}{fmt(b.optimizer):>12}"
              f"{fmt(b.activations):>13}{fmt(b.total):>12}{fits[0]:>13}{fits[1]:>13}")
    f, lo = rows["full"], rows["lora"]
    print(f"  LoRA/full: trainable params {ratio(lo.trainable_params, f.trainable_params)}, grads+optimizer "
          f"{ratio(lo.grads + lo.optimizer, f.grads + f.optimizer)} ({fmt(f.grads + f.optimizer - lo.grads - lo.optimizer)} "
          f"saved per device), total {ratio(lo.total, f.total)}  (fits: after {mp.RESERVED_FRACTION:.0%} reserved)")


# ---------------------------------------------------------------------------------------------
# Part 2: Ray Train


def write_dataset(root: Path, *, image_size: int, episodes: int, length: int, seed: int = 0) -> Path:
    """Learnable synthetic demonstrations with two cameras (as tests/platform/test_train.py)."""
    from gauntlet.data.dataset_format import DatasetWriter
    from gauntlet.data.stats import main as stats_main

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 7)).astype(np.float32) * 0.5
    with DatasetWriter(root, source={"kind": "bench_train"}, action_dim=7) as writer:
        for ep in range(episodes):
            states = rng.normal(size=(length, 8)).astype(np.float32)
            images = {cam: rng.integers(0, 256, size=(length, image_size, image_size, 3), dtype=np.uint8)
                      for cam in ("agentview", "wrist")}
            writer.add_episode(states, np.tanh(states @ w).astype(np.float32), task="lift", variant="D0",
                               prompt=PROMPT, success=True, images=images, split="train", seed=ep)
    with contextlib.redirect_stdout(io.StringIO()):
        if stats_main([str(root)]) != 0:
            raise SystemExit(f"gauntlet data stats {root} failed")
    return root


def loop_rate(preset: str, mode: str, batch: int, seconds: float, cpu: bool) -> float:
    """samples/s of one plain process doing a worker's per-step work (prepare + step + loss), no Ray."""
    import jax

    from gauntlet.policies.vla.policy import VLAPolicy
    from gauntlet.policies.vla.train import make_train_step

    ctx: Any = contextlib.nullcontext()
    if cpu and jax.default_backend() != "cpu":
        with contextlib.suppress(RuntimeError):
            ctx = jax.default_device(jax.devices("cpu")[0])
    with ctx:
        policy = VLAPolicy.create(preset)
        opt = optimizer()
        holder = {"state": train_state(policy, mode, opt), "i": 0}
        step = make_train_step(policy.model, opt)
        raw = raw_batch(policy.config, batch)

        def one() -> None:
            x = policy.prepare_train_batch(raw, np.random.default_rng([0, holder["i"]]))
            holder["state"], metrics = step(holder["state"], x)
            float(metrics["loss"])
            holder["i"] += 1

        return timed_rate(one, batch, seconds)[0]


def ray_run(dataset: Path, out: Path, base: str, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    from gauntlet.platform.train.driver import TrainConfig, run_train

    cfg = TrainConfig(dataset=str(dataset), out=str(out), base=base, preset="tiny", mode=args.ray_mode,
                      steps=args.ray_steps, workers=workers, batch_size=args.ray_batch, report_every=20,
                      checkpoint_every=args.ray_steps, log_every=args.ray_steps, warmup_steps=10,
                      cpus_per_worker=args.cpus_per_worker, loader_workers=1, decode_workers=1, prefetch_depth=4)
    t0 = time.perf_counter()
    captured = io.StringIO()  # run_train's plan and progress lines: shown only if it fails
    try:
        with contextlib.redirect_stdout(captured):
            run_train(cfg)
    except Exception:
        print(captured.getvalue(), flush=True)
        raise
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steady = [r for r in rows if r["step"] > args.skip_steps]
    dts = [1.0 / r["steps_per_s"] for r in steady if r["steps_per_s"] > 0]
    total_median = statistics.median(r["samples_per_s"] for r in steady)
    return {
        "workers": workers, "steps": len(rows), "wall_s": wall,
        "total": total_median, "per_worker": statistics.median(r["samples_per_s_per_worker"] for r in steady),
        "mean_incl_barriers": len(dts) * args.ray_batch / sum(dts) if dts else 0.0,
        "first_step_s": 1.0 / rows[0]["steps_per_s"] if rows and rows[0]["steps_per_s"] > 0 else float("nan"),
        "peak_mb": max(r.get("peak_memory_mb", 0.0) for r in rows),
        "final_loss": rows[-1]["loss"] if rows else float("nan"), "first_loss": rows[0]["loss"] if rows else float("nan"),
    }


def run_ray(args: argparse.Namespace) -> None:
    import ray

    from gauntlet.policies.vla.policy import VLAPolicy

    workers_list = [int(w) for w in args.ray_workers.split(",") if w]
    tmp = Path(tempfile.mkdtemp(prefix="gauntlet-bench-train-"))
    dataset = write_dataset(tmp / "ds", image_size=32, episodes=8, length=max(40, args.ray_batch))
    base = ""
    if args.ray_mode == "lora":
        base_path = tmp / "base"
        VLAPolicy.create("tiny", seed=3).save(base_path)
        base = str(base_path)
    started = False
    if not ray.is_initialized():
        from gauntlet.runtime.ray_session import init_local_ray

        init_local_ray("bench_train", num_cpus=args.ray_cpus, log_to_driver=False)  # loopback, token auth
        started = True
    results = []
    try:
        for w in workers_list:
            print(f"  Ray Train: {args.ray_mode}, {w} worker(s), {args.ray_steps} steps, global batch "
                  f"{args.ray_batch} ...", flush=True)
            results.append(ray_run(dataset, tmp / f"out-w{w}", base, args, w))
    finally:
        if started:
            ray.shutdown()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print("  in-process baselines (no Ray, CPU) ...", flush=True)
    single = {b: loop_rate("tiny", args.ray_mode, b, args.seconds, cpu=True)
              for b in sorted({args.ray_batch} | {args.ray_batch // w for w in workers_list})}

    print(f"\n== gauntlet train on Ray Train: tiny preset, {args.ray_mode}, global batch {args.ray_batch}, "
          f"{args.ray_steps} steps, CPU workers ({args.cpus_per_worker:g} CPU reserved each; "
          f"{os.cpu_count()} cores on this host) ==")
    print(f"{'setup':<26}{'batch/worker':>13}{'samples/s':>11}{'per worker':>12}{'incl. barriers':>16}"
          f"{'vs 1 proc':>11}{'worker vs proc':>16}{'peak MB':>9}{'1st step s':>11}{'wall s':>8}")
    print(f"{'1 process, no Ray':<26}{args.ray_batch:>13}{single[args.ray_batch]:>11.1f}"
          f"{single[args.ray_batch]:>12.1f}{'':>16}{'1x':>11}{'':>16}{'':>9}{'':>11}{'':>8}")
    for r in results:
        w = r["workers"]
        per = args.ray_batch // w
        print(f"{f'Ray Train, {w} worker(s)':<26}{per:>13}{r['total']:>11.1f}{r['per_worker']:>12.1f}"
              f"{r['mean_incl_barriers']:>16.1f}{ratio(r['total'], single[args.ray_batch]):>11}"
              f"{ratio(r['per_worker'], single[per]):>16}{r['peak_mb']:>9.0f}{r['first_step_s']:>11.1f}"
              f"{r['wall_s']:>8.1f}")
    for b, v in single.items():
        if b != args.ray_batch:
            print(f"  (1 process at batch {b}, what one worker computes: {v:.1f} samples/s)")
    print(f"  samples/s and per worker: median over steps > {args.skip_steps} (Ray Train rows from metrics.jsonl); "
          "incl. barriers: mean over the same steps including report/checkpoint barriers; vs 1 proc: total / one "
          "process at the global batch; worker vs proc: per worker / one process at the per-worker batch; peak MB: "
          "worker's peak RSS (CPU) or device peak (GPU); wall: run_train end to end (worker start, compile, "
          "checkpoint, artifact)")
    for r in results:
        print(f"  {r['workers']} worker(s): loss {r['first_loss']:.4f} -> {r['final_loss']:.4f} over {r['steps']} steps")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small", help="presets compiled and timed, LoRA vs full")
    parser.add_argument("--batch", type=int, default=8, help="per-device batch of the LoRA-vs-full comparison")
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per measurement")
    parser.add_argument("--planner-preset", default="base", help="preset shown with planner numbers only ('' = none)")
    parser.add_argument("--planner-batch", type=int, default=32, help="batch of the planner-only preset")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Train part")
    parser.add_argument("--ray-mode", default="full", choices=("full", "lora"), help="mode of the Ray Train runs")
    parser.add_argument("--ray-workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--ray-steps", type=int, default=60, help="steps per Ray Train run")
    parser.add_argument("--ray-batch", type=int, default=32, help="global batch of the Ray Train runs")
    parser.add_argument("--ray-cpus", type=int, default=4, help="num_cpus of the local Ray started here")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per Ray Train worker")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (dataset, run outputs)")
    parser.add_argument("--skip-steps", type=int, default=5, help="first steps left out of the steady state")
    parser.add_argument("--device-note", default="", help="free text appended to the device line (e.g. GPU model)")
    args = parser.parse_args(argv)

    # Ray starts its processes with fork+exec after JAX's threads exist; the exec makes that safe.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    import jax

    t_start = time.perf_counter()
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    print(f"device: JAX {jax.__version__} backend {jax.default_backend()} ({len(devices)} x {', '.join(kinds)}); "
          f"{os.cpu_count()} CPU cores; Python {platform.python_version()}"
          + (f"; note: {args.device_note}" if args.device_note else ""), flush=True)

    for preset in [p for p in args.presets.split(",") if p]:
        rows = run_modes(preset, args.batch, args.seconds)
        print_modes(preset, args.batch, rows)
    if args.planner_preset:
        print_planner_only(args.planner_preset, args.planner_batch)
    if not args.no_ray:
        print(flush=True)
        run_ray(args)
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
