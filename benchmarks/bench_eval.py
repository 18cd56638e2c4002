"""Evaluation throughput: the same scenes with the scripted oracle, in one run.

(a) serial: one process, one env, the policy called in-process (today's set-up);
(b) N in-process workers (multiprocessing), the policy called locally: the simulation-bound ceiling
    for N cores;
(c) Gauntlet: N rollout actors, the policy on Ray Serve (DeploymentHandles, batched replica).
Prints episodes/min for each, (c)/(a) and (c)/(b). With --vla it also runs (c) with the tiny VLA
and prints the mean batch size its replica saw.

    .venv/bin/python benchmarks/bench_eval.py [--scenes DB] [--workers 2] [--horizon 150]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def _run_serial(db_path: str, scene_ids: list[str], horizon: int) -> int:
    from gauntlet.envs.scene_db import SceneDB
    from gauntlet.platform.eval.episode import EnvCache, WorkItem, run_episode
    from gauntlet.platform.eval.sources import LocalSource

    db = SceneDB.open(db_path)
    meta = db.metadata().set_index("scene_id")
    source = LocalSource("scripted")
    envs = EnvCache()
    for sid in scene_ids:
        scene = dict(meta.loc[sid])
        scene["scene_id"] = sid
        run_episode(db, envs, WorkItem("bench", sid, "scripted", 0, horizon), scene, source, "bench", "bench")
    return len(scene_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", default="", help="scene DB (default: generate a small one)")
    parser.add_argument("--workers", type=int, default=2, help="N: processes for (b), actors for (c)")
    parser.add_argument("--horizon", type=int, default=150)
    parser.add_argument("--vla", action="store_true", help="also run (c) with the tiny VLA")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    db_path = args.scenes
    if not db_path:
        from gauntlet.envs.scenes_cli import GenerateConfig, generate

        db_path = str(tmp / "scenes")
        generate(GenerateConfig(out=db_path, tasks="lift,stack", variants="D0,D1",
                                error_types="object_pose_perturb,object_push,drop,gripper_stall,"
                                            "robot_joint_push,collision_nudge",
                                workers=args.workers, validate=False))
    from gauntlet.envs.scene_db import SceneDB

    scene_ids = sorted(SceneDB.open(db_path).metadata()["scene_id"])
    n = len(scene_ids)
    print(f"{n} scenes, horizon {args.horizon}, N = {args.workers}", flush=True)

    t = time.perf_counter()
    _run_serial(db_path, scene_ids, args.horizon)
    serial = n / (time.perf_counter() - t) * 60
    print(f"(a) serial: {serial:.1f} episodes/min", flush=True)

    shards = [scene_ids[i :: args.workers] for i in range(args.workers)]
    t = time.perf_counter()
    with get_context("spawn").Pool(args.workers) as pool:
        pool.starmap(_run_serial, [(db_path, s, args.horizon) for s in shards])
    parallel = n / (time.perf_counter() - t) * 60
    print(f"(b) {args.workers} in-process workers: {parallel:.1f} episodes/min", flush=True)

    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval

    rows = []
    for policy in ["scripted"] + (["vla"] if args.vla else []):
        t = time.perf_counter()
        summary = run_eval(EvalConfig(scenes=db_path, policy=(policy,), out=str(tmp / f"run-{policy}"),
                                      actors=args.workers, horizon=args.horizon, actor_cpus=0.5))
        with_startup = n / (time.perf_counter() - t) * 60
        import json

        steady = json.loads((tmp / f"run-{policy}" / "status.json").read_text())["episodes_per_min"]
        batch = summary.get("serving", {}).get(policy, {}).get("mean_batch_size", float("nan"))
        rows.append((policy, steady, batch))
        print(f"(c) Gauntlet, {args.workers} actors, {policy} on Serve: {steady:.1f} episodes/min once running "
              f"({with_startup:.1f} including Ray/Serve start-up), mean batch {batch:.2f}", flush=True)

    print(f"\n{'row':<44}{'episodes/min':>14}")
    print(f"{'(a) serial, in-process policy':<44}{serial:>14.1f}")
    print(f"{f'(b) {args.workers} in-process workers':<44}{parallel:>14.1f}")
    for policy, rate, batch in rows:
        print(f"{f'(c) Gauntlet {args.workers} actors + Serve ({policy})':<44}{rate:>14.1f}   mean batch {batch:.2f}")
    c = rows[0][1]
    print(f"\n(c)/(a) = {c / serial:.2f}   (c)/(b) = {c / parallel:.2f}", flush=True)


if __name__ == "__main__":
    main()
