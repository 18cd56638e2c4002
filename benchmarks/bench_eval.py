"""Evaluation throughput: the same scenes with the scripted oracle, in one run.

(a) serial: one process, one env, the oracle called in-process;
(b) N in-process workers (multiprocessing), the oracle called locally: the simulation-bound ceiling
    for N cores;
each twice: stepping with robosuite's own controller (today's set-up: what every robosuite-based
harness runs) and with Gauntlet's bit-exact fast stepping (`envs/fast_control.py`, what (c) uses), so
(c)/(a) is printed against today's set-up and like for like;
(c) Gauntlet: N rollout actors, the oracle in-process in each actor (as in (a) and (b): like with like),
    with one env per actor and with K (`--envs-per-actor`).
With --vla: the VLA (`--vla-size`, tiny by default) deployed on Serve, N actors x 1 env and N actors x K
envs, with the mean batch its replica saw and the ratio K / 1; and their ceiling, (b) for the VLA: N
in-process workers, each running the same VLA in its own process on one env (no serving, no
batching: what the cores give when they only simulate, render and infer), so that the Serve rows
print as shares of it. These rows run the scenes of one env configuration (--vla-tasks,
--vla-variants) with --vla-trials trials each: an actor builds K envs per configuration it meets (an env
with its renderer takes seconds on a CPU), which a real run amortises over hundreds of episodes but a
24-episode benchmark over four configurations would mostly measure. 12 trials (72 episodes): a
run's first round and its tail, where an actor has fewer episodes left than envs, ask in smaller
rounds; with 24 episodes they were a third of the run.

Every row is timed twice, the same way for all:
- cold: from handing the work over (worker processes spawned / actors created) to the last episode,
  so process start, imports and env builds count once per worker, in every row;
- warm: from the moment every worker has finished its first episode (its envs are built) to the last
  episode, over the episodes finished in that window (timestamps per episode: the workers' own for
  (a)/(b), the results part files for (c), written one per episode).

    .venv/bin/python benchmarks/bench_eval.py [--scenes DB] [--workers 2] [--horizon 150] [--vla]
        [--envs-per-actor 4] [--vla-batch-wait-ms 5] [--vla-tasks lift] [--vla-variants D0] [--vla-trials 12]
        [--vla-size tiny] [--only-vla]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
# One BLAS thread per process in every row, as Ray gives its actors (two spinning BLAS pools per
# process on two cores would slow (a) and (b) for no reason of their own).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _run_serial(db_path: str, items: list[tuple[str, int]], horizon: int, fast: bool,
                policy: str = "scripted", vla_size: str = "tiny") -> list[tuple[str, float]]:
    """Runs the episodes in this process; returns (worker, finished-at) per episode (wall clock).
    `fast`: Gauntlet's fast stepping, else robosuite's own (the same states either way)."""
    import json

    from gauntlet.envs.scene_db import SceneDB
    from gauntlet.platform.eval.env_cache import EnvCache
    from gauntlet.platform.eval.episode import WorkItem, run_episode
    from gauntlet.platform.eval.sources import LocalSource
    from gauntlet.policies.registry import make_policy

    db = SceneDB.open(db_path)
    meta = db.metadata().set_index("scene_id")
    # The VLA as `gauntlet eval` deploys it (`--vla-size`, the preset's seeded initial weights).
    source = LocalSource(policy, policy=make_policy("vla", config_name=vla_size) if policy == "vla" else None)
    envs = EnvCache()
    done = []
    for sid, trial in items:
        scene = dict(meta.loc[sid])
        scene["scene_id"] = sid
        scene["env_config"] = json.dumps({**json.loads(scene["env_config"]), "fast_control": fast}, sort_keys=True)
        run_episode(db, envs, WorkItem("bench", sid, policy, trial, horizon), scene, source, "bench", "bench")
        done.append((str(os.getpid()), time.time()))
    return done


def _rates(started: float, finished: list[tuple[str, float]]) -> tuple[float, float]:
    """(cold, warm) episodes/min from (worker, finished-at) stamps; see the module docstring."""
    ends = sorted(t for _, t in finished)
    cold = len(ends) / (ends[-1] - started) * 60
    firsts: dict[str, float] = {}
    for worker, t in finished:
        firsts[worker] = min(t, firsts.get(worker, t))
    warm_from = max(firsts.values())
    after = [t for t in ends if t > warm_from]
    warm = len(after) / (ends[-1] - warm_from) * 60 if after else float("nan")
    return cold, warm


def _pool_rates(db_path: str, shards: list[list[str]], horizon: int, fast: bool,
                policy: str = "scripted", vla_size: str = "tiny") -> tuple[float, float]:
    t = time.time()
    with get_context("spawn").Pool(len(shards)) as pool:
        done = pool.starmap(_run_serial, [(db_path, s, horizon, fast, policy, vla_size) for s in shards])
    return _rates(t, [stamp for worker in done for stamp in worker])


class _PartWatcher:
    """Stamps each results part file as it appears (the driver compacts them away at the end); with
    one episode per part, part i is row i of the compacted results. Only `stat`s, every 20 ms: the
    watcher shares the driver's process and the machine's cores."""

    def __init__(self, run_dir: Path):
        import threading

        self.dir = run_dir / "results"
        self.mtimes: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            try:
                entries = list(os.scandir(self.dir))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith("part-") and entry.name not in self.mtimes:
                    try:
                        self.mtimes[entry.name] = entry.stat().st_mtime
                    except FileNotFoundError:  # compacted away meanwhile
                        pass

    def stop(self, workers: list[str]) -> list[tuple[str, float]]:
        """(worker, finished-at) per episode, given the compacted rows' workers in part order."""
        self._stop.set()
        self._thread.join()
        return list(zip(workers, (self.mtimes[name] for name in sorted(self.mtimes)), strict=False))


def _gauntlet(db_path: str, out: Path, policy: str, workers: int, envs_per_actor: int, horizon: int,
              batch_wait_s: float, **select: Any) -> dict[str, Any]:
    """One `run_eval`; rates from its status (cold) and its one-episode part files (warm)."""
    import json

    import pandas as pd

    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval

    watcher = _PartWatcher(out)
    summary = run_eval(EvalConfig(scenes=db_path, policy=(policy,), out=str(out), actors=workers,
                                  envs_per_actor=envs_per_actor, horizon=horizon, actor_cpus=0.5, write_every=1,
                                  batch_wait_timeout_s=batch_wait_s, **select))
    stamps = watcher.stop(pd.read_parquet(out / "results.parquet")["worker"].tolist())
    status = json.loads((out / "status.json").read_text())
    _, warm = _rates(min(t for _, t in stamps), stamps)  # cold: the status clock, from the first dispatch
    name = policy.removeprefix("deploy=")
    batch = summary.get("serving", {}).get(name, {}).get("mean_batch_size", float("nan"))
    return {"cold": status["episodes_per_min"], "warm": warm, "batch": batch, "seen": len(stamps)}


def _generate(tmp: Path, workers: int) -> str:
    from gauntlet.envs.scenes_cli import GenerateConfig, generate

    db_path = str(tmp / "scenes")
    generate(GenerateConfig(out=db_path, tasks="lift,stack", variants="D0,D1",
                            error_types="object_pose_perturb,object_push,drop,gripper_stall,"
                                        "robot_joint_push,collision_nudge",
                            workers=workers, validate=False))
    return db_path


def _measure(args: argparse.Namespace, db_path: str, scene_ids: list[str], vla_scene_ids: list[str],
             tmp: Path) -> dict[str, dict[str, float]]:
    """One pass over every row: row key -> {"cold", "warm"(, "batch")}."""
    from gauntlet.deployments.batcher import DEFAULT_BATCH_WAIT_S

    n, k = args.workers, args.envs_per_actor
    items = [(sid, trial) for sid in scene_ids for trial in range(args.trials)]  # the driver's order
    shards = [items[i::n] for i in range(n)]
    out = {}
    for fast, tag in () if args.only_vla else ((False, "robosuite"), (True, "fast")):
        out[f"a-{tag}"] = dict(zip(("cold", "warm"), _pool_rates(db_path, [items], args.horizon, fast), strict=True))
        print(f"(a) {tag}", out[f"a-{tag}"], flush=True)
        out[f"b-{tag}"] = dict(zip(("cold", "warm"), _pool_rates(db_path, shards, args.horizon, fast), strict=True))
        print(f"(b) {tag}", out[f"b-{tag}"], flush=True)
    for envs in () if args.only_vla else (1, k):
        out[f"oracle{envs}"] = _gauntlet(db_path, tmp / f"oracle-k{envs}", "scripted", n, envs, args.horizon,
                                         DEFAULT_BATCH_WAIT_S, trials=args.trials)
        print(f"(c) oracle K={envs}", out[f"oracle{envs}"], flush=True)
    if args.vla:
        vla_items = [(sid, trial) for sid in vla_scene_ids for trial in range(args.vla_trials)]
        out["vla-inproc"] = dict(zip(("cold", "warm"), _pool_rates(db_path, [vla_items[i::n] for i in range(n)],
                                                                   args.horizon, True, "vla", args.vla_size),
                                        strict=True))
        print(f"(b) VLA in-process x {n}", out["vla-inproc"], flush=True)
    for envs in (1, k) if args.vla else ():
        out[f"vla{envs}"] = _gauntlet(db_path, tmp / f"vla-k{envs}", "vla", n, envs, args.horizon,
                                      args.vla_batch_wait_ms / 1e3, tasks=args.vla_tasks,
                                      variants=args.vla_variants, trials=args.vla_trials, vla_size=args.vla_size)
        print(f"(c) VLA K={envs}", out[f"vla{envs}"], flush=True)
    return out


def _report(args: argparse.Namespace, runs: list[dict[str, dict[str, float]]]) -> None:
    """Each row's median over the repeats, and the ratios of those medians."""
    import math
    import statistics

    n, k = args.workers, args.envs_per_actor
    med = {row: {m: statistics.median(r[row][m] for r in runs) for m in runs[0][row]} for row in runs[0]}
    names = {}
    for tag, how in (("robosuite", "robosuite stepping"), ("fast", "fast stepping")):
        names[f"a-{tag}"] = f"(a) serial, oracle in-process, {how}"
        names[f"b-{tag}"] = f"(b) {n} in-process workers, {how}"
    names["vla-inproc"] = f"(b) {n} in-process workers, {args.vla_size} VLA in each (the VLA rows' ceiling)"
    for envs in (1, k):
        names[f"oracle{envs}"] = f"(c) Gauntlet {n} actors x {envs} env, oracle in actors"
        names[f"vla{envs}"] = f"(c) {n} actors x {envs} env, {args.vla_size} VLA on Serve ({args.vla_tasks} {args.vla_variants})"
    print(f"\nmedians of {len(runs)} pass(es)\n{'row':<70}{'cold ep/min':>12}{'warm ep/min':>12}")
    for row, m in med.items():
        note = f"   mean batch {m['batch']:.2f}" if not math.isnan(m.get("batch", math.nan)) else ""
        print(f"{names[row]:<70}{m['cold']:>12.1f}{m['warm']:>12.1f}{note}")
    for t in ("cold", "warm") if "oracle1" in med else ():
        c1, ck = med["oracle1"][t], med[f"oracle{k}"][t]
        for tag, against in (("robosuite", "today's set-up (robosuite stepping)"), ("fast", "like for like (fast stepping)")):
            a, b = med[f"a-{tag}"][t], med[f"b-{tag}"][t]
            print(f"{t}, against {against}: (c)/(a) = {c1 / a:.2f} (K={k}: {ck / a:.2f})   "
                  f"(c)/(b) = {c1 / b:.2f} (K={k}: {ck / b:.2f})   (b)/(a) = {b / a:.2f}", flush=True)
    if args.vla:
        v1, vk = med["vla1"], med[f"vla{k}"]
        print(f"{args.vla_size} VLA, batch wait {args.vla_batch_wait_ms:g} ms: K={k} / K=1 = {vk['cold'] / v1['cold']:.2f} "
              f"cold, {vk['warm'] / v1['warm']:.2f} warm; mean batch {v1['batch']:.2f} -> {vk['batch']:.2f}",
              flush=True)
        ceiling = med["vla-inproc"]
        print(f"share of the VLA ceiling ((b) in-process), cold / warm: K=1 {v1['cold'] / ceiling['cold']:.2f} / "
              f"{v1['warm'] / ceiling['warm']:.2f}, K={k} {vk['cold'] / ceiling['cold']:.2f} / "
              f"{vk['warm'] / ceiling['warm']:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default="", help="scene DB (default: generate 24 lift/stack scenes)")
    parser.add_argument("--workers", type=int, default=2, help="N: processes for (b), actors for (c)")
    parser.add_argument("--horizon", type=int, default=150)
    parser.add_argument("--trials", type=int, default=4,
                        help="oracle rows: episodes per scene (an env build, ~1 s, is paid per configuration "
                             "a worker meets; real runs amortise it over many episodes)")
    parser.add_argument("--envs-per-actor", type=int, default=4, help="K: envs per actor in the K rows")
    parser.add_argument("--vla", action="store_true", help="also run the VLA (--vla-size) on Serve, K = 1 and K, and its in-process ceiling")
    parser.add_argument("--vla-batch-wait-ms", type=float, default=5.0,
                        help="the VLA replica's batch wait (both VLA rows); 5 ms is `gauntlet eval`'s default")
    parser.add_argument("--vla-size", default="tiny", choices=("tiny", "small", "base"),
                        help="VLA rows: the preset deployed (and run in-process for the ceiling)")
    parser.add_argument("--vla-tasks", default="lift", help="VLA rows: only these tasks")
    parser.add_argument("--vla-variants", default="D0", help="VLA rows: only these variants")
    parser.add_argument("--vla-trials", type=int, default=12, help="VLA rows: trials per scene")
    parser.add_argument("--only-vla", action="store_true", help="with --vla: only the VLA rows and their ceiling")
    parser.add_argument("--repeats", type=int, default=1,
                        help="passes over all rows (interleaved); each row reports its median")
    args = parser.parse_args()
    if args.only_vla and not args.vla:
        parser.error("--only-vla needs --vla")

    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    db_path = args.scenes or _generate(tmp, args.workers)
    from gauntlet.envs.scene_db import SceneDB
    from gauntlet.runtime.ray_session import start_ray

    meta = SceneDB.open(db_path).metadata()
    scene_ids = sorted(meta["scene_id"])
    picked = meta["task"].isin(args.vla_tasks.split(",")) & meta["variant"].isin(args.vla_variants.split(","))
    vla_scene_ids = sorted(meta.loc[picked, "scene_id"])  # the scenes `--vla-tasks/--vla-variants` select
    print(f"{len(scene_ids)} scenes, horizon {args.horizon}, N = {args.workers}, K = {args.envs_per_actor}",
          flush=True)
    # Once, first: no row pays Ray's start, and every row runs beside the same idle Ray daemons.
    start_ray("bench", num_cpus=max(4, args.workers + 2), log_to_driver=False)
    runs = [_measure(args, db_path, scene_ids, vla_scene_ids, tmp / f"pass{i}") for i in range(args.repeats)]
    _report(args, runs)


if __name__ == "__main__":
    main()
