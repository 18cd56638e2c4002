"""The evaluation rows of bench_peers.py: LeRobot's own evaluator against Gauntlet's, one checkpoint,
the same scenes and trials, on the same machine.

- lerobot-eval: `lerobot-eval --env.type=gauntlet` (the lerobot_env_gauntlet plugin) in the LeRobot 0.6.1
  environment Gauntlet's replicas use (a Ray task with that runtime_env, the plugin installed with
  `pip --no-deps`), its vector env of K sub-envs (`--eval.batch_size=K`), async (each sub-env in its
  own process, LeRobot's default);
- gauntlet eval: `run_eval` with `--policy lerobot=CKPT` (the checkpoint on a batched Serve replica in
  the same LeRobot environment), A rollout actors x K envs each.

Episode e of lerobot-eval runs selected scene e mod N (the plugin's shards), so N scenes x T trials is
`--eval.n_episodes=N*T` there and `--trials T` here. Each row gives episodes/min twice: "eval", the
evaluator's own clock (lerobot-eval's `eval_s`, from its first rollout after envs and policy are made;
Gauntlet's status clock, from the first dispatch), and "wall", the whole command (start-up included).
Success per error type with 95 % Wilson intervals for both. The checkpoint is a random ACT at 32 px
unless `--eval-checkpoint` names one (its image size: `--eval-image-size`). lerobot-eval also renders
the first 10 episodes into videos (its hard-wired default), as a user's run does.

    from peers_eval import add_eval_args, eval_rows, print_eval_rows   # bench_peers.py's calls
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "lerobot_env_gauntlet"
LEROBOT, GAUNTLET = "lerobot-eval", "gauntlet eval"  # row names


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    """The eval rows' options (`--quick` too: bench_peers resolves the duplicate)."""
    group = parser.add_argument_group("evaluation rows (lerobot-eval vs gauntlet eval)")
    group.add_argument("--quick", action="store_true", help="a couple of minutes: horizon 30, two trials")
    group.add_argument("--eval-scenes", default="", help="scene database (default: 4 lift D0 scenes, generated)")
    group.add_argument("--eval-checkpoint", default="", help="LeRobot pretrained_model dir (default: random ACT)")
    group.add_argument("--eval-image-size", type=int, default=32, help="px the checkpoint was trained at")
    group.add_argument("--eval-actors", type=int, default=2, help="gauntlet eval's rollout actors (A)")
    group.add_argument("--eval-envs-per-actor", type=int, default=2, help="gauntlet eval's envs per actor (K)")
    group.add_argument("--eval-lerobot-envs", type=int, default=0,
                       help="lerobot-eval's sub-envs (--eval.batch_size; 0: A x K, the same envs in flight)")
    group.add_argument("--eval-trials", type=int, default=3, help="trials per scene (both evaluators)")
    group.add_argument("--eval-horizon", type=int, default=150, help="steps per episode (both evaluators)")


def _scenes(args: argparse.Namespace, tmp: Path) -> str:
    if args.eval_scenes:
        return args.eval_scenes
    from gauntlet.platform.cli import main as cli

    out = tmp / "scenes"
    assert cli(["scenes", "generate", "--out", str(out), "--tasks", "lift", "--variants", "D0", "--error-types",
                "drop,object_push,gripper_stall,robot_joint_push", "--workers", "1", "--image-size",
                str(args.eval_image_size), "--no-validate"]) == 0
    return str(out)


def _run_lerobot_eval(site: str, argv: list[str]) -> dict[str, Any]:
    """Runs in the LeRobot environment: its `lerobot-eval` console script with the plugin in `site`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)}
    started = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "lerobot-eval"), *argv], env=env,
                          capture_output=True, text=True, timeout=3600)
    return {"returncode": proc.returncode, "output": proc.stdout + proc.stderr,
            "wall_s": time.perf_counter() - started}


def _lerobot_task(fn: Any, tmp: Path) -> Any:
    import ray
    from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

    from gauntlet.policies.lerobot.environment import runtime_env

    env = runtime_env()
    # The session's Serve gRPC bind hook imports ray.serve, which the LeRobot venv's protobuf breaks;
    # these tasks start no Serve proxy.
    env["env_vars"] = {**env["env_vars"], "MUJOCO_GL": "egl", WORKER_PROCESS_SETUP_HOOK_ENV_VAR: "",
                       "HF_HOME": str(tmp / "hf_home"), "HF_HUB_OFFLINE": "1"}
    if fn.__module__.split(".")[0] != "gauntlet":  # workers cannot import benchmarks/: send it by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[fn.__module__])
    return ray.remote(fn).options(runtime_env=env, num_cpus=1, max_retries=0)


def _success_by_type(error_types: list[str], successes: list[bool]) -> dict[str, tuple[int, int, float, float]]:
    """error type -> (successes, episodes, Wilson 95 % low, high)."""
    from gauntlet.platform.report.stats import wilson_interval

    out = {}
    for kind in sorted(set(error_types)):
        hits = [s for t, s in zip(error_types, successes, strict=True) if t == kind]
        out[kind] = (sum(hits), len(hits), *wilson_interval(sum(hits), len(hits)))
    return out


def _lerobot_row(args: argparse.Namespace, db: str, ckpt: str, n_envs: int, meta: Any, tmp: Path) -> dict[str, Any]:
    import ray

    site, source = tmp / "site", tmp / "plugin_src"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True, timeout=300)
    order = sorted(meta["scene_id"])
    n_episodes = len(order) * args.eval_trials
    result = ray.get(_lerobot_task(_run_lerobot_eval, tmp).remote(str(site), [
        "--env.type=gauntlet", f"--env.scenes={db}", f"--env.image_size={args.eval_image_size}",
        f"--env.episode_length={args.eval_horizon}", f"--policy.path={ckpt}", "--policy.device=cpu",
        f"--eval.n_episodes={n_episodes}", f"--eval.batch_size={n_envs}", "--eval.use_async_envs=true",
        f"--output_dir={tmp / 'lerobot_out'}"]))
    if result["returncode"]:
        raise RuntimeError(f"lerobot-eval failed:\n{result['output'][-4000:]}")
    info = json.loads((tmp / "lerobot_out" / "eval_info.json").read_text())
    successes = [s for task in info["per_task"] for s in task["metrics"]["successes"]]
    kinds = meta.set_index("scene_id")["error_type"]
    types = [kinds[order[e % len(order)]] for e in range(len(successes))]  # episode e: scene e mod N
    eval_s = info["overall"]["eval_s"]
    return {"row": LEROBOT, "setup": f"{n_envs} async sub-envs", "episodes": len(successes),
            "eval_epm": len(successes) / eval_s * 60, "wall_epm": len(successes) / result["wall_s"] * 60,
            "success": _success_by_type(types, successes)}


def _gauntlet_row(args: argparse.Namespace, db: str, ckpt: str, tmp: Path) -> dict[str, Any]:
    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval
    from gauntlet.platform.eval.results import ResultsStore

    a, k = args.eval_actors, args.eval_envs_per_actor
    out = tmp / "gauntlet_run"
    started = time.perf_counter()
    run_eval(EvalConfig(scenes=db, policy=(f"lerobot={ckpt}",), out=str(out), actors=a, envs_per_actor=k,
                        horizon=args.eval_horizon, trials=args.eval_trials, actor_cpus=0.5, max_batch_size=a * k))
    wall = time.perf_counter() - started
    status = json.loads((out / "status.json").read_text())
    frame = ResultsStore(out).read()
    ran = frame[~frame["skipped"]]
    return {"row": GAUNTLET, "setup": f"{a} actors x {k} envs, batched replica", "episodes": len(ran),
            "skipped": int(frame["skipped"].sum()), "eval_epm": status["episodes_per_min"],
            "wall_epm": len(ran) / wall * 60,
            "success": _success_by_type(ran["error_type"].tolist(), ran["success"].astype(bool).tolist())}


def eval_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """lerobot-eval's row, then gauntlet eval's (on the running Ray, else one started and stopped here)."""
    import ray

    from gauntlet.envs.scene_db import SceneDB
    from gauntlet.runtime.ray_session import ray_session

    if args.quick:
        args.eval_horizon, args.eval_trials = min(args.eval_horizon, 30), 2
    n_envs = args.eval_lerobot_envs or args.eval_actors * args.eval_envs_per_actor
    tmp = Path(tempfile.mkdtemp(prefix="peers_eval_"))
    started, session = False, tmp
    try:
        with ray_session("bench_peers") as started:
            session = Path(ray._private.worker._global_node.get_session_dir_path())
            db = _scenes(args, tmp)
            meta = SceneDB.open(db).metadata()
            ckpt = args.eval_checkpoint
            if not ckpt:
                from gauntlet.policies.lerobot.untrained_checkpoints import save_random_policy

                ckpt = ray.get(_lerobot_task(save_random_policy, tmp).remote(
                    "act", str(tmp / "act"), image_size=args.eval_image_size))
            print(f"[peers-eval] {len(meta)} scenes x {args.eval_trials} trials, horizon {args.eval_horizon}, "
                  f"checkpoint {ckpt}", flush=True)
            rows = [_lerobot_row(args, db, ckpt, n_envs, meta, tmp)]
            print(f"[peers-eval] {rows[-1]['row']}: {rows[-1]['eval_epm']:.1f} episodes/min", flush=True)
            rows.append(_gauntlet_row(args, db, ckpt, tmp))
            print(f"[peers-eval] {rows[-1]['row']}: {rows[-1]['eval_epm']:.1f} episodes/min", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if started:  # the LeRobot environment's venv clone (7 GB), which Ray leaves behind
            shutil.rmtree(session / "runtime_resources", ignore_errors=True)
    return rows


def print_eval_rows(rows: list[dict[str, Any]]) -> None:
    """Episodes/min (both clocks), success per error type with intervals, gauntlet / lerobot ratios."""
    by = {r["row"]: r for r in rows}
    print("\n== evaluation: lerobot-eval vs gauntlet eval (same checkpoint, scenes, trials) ==", flush=True)
    print(f"{'row':15s} {'setup':34s} {'episodes':>8s} {'eval ep/min':>12s} {'wall ep/min':>12s}")
    for r in rows:
        print(f"{r['row']:15s} {r['setup']:34s} {r['episodes']:8d} {r['eval_epm']:12.1f} {r['wall_epm']:12.1f}")
    if LEROBOT in by and GAUNTLET in by:
        lr, ga = by[LEROBOT], by[GAUNTLET]
        eval_ratio, wall_ratio = ga["eval_epm"] / lr["eval_epm"], ga["wall_epm"] / lr["wall_epm"]
        print(f"gauntlet / lerobot: {eval_ratio:.2f}x (eval clock), {wall_ratio:.2f}x (wall); target >= 1.0x: "
              f"{'met' if eval_ratio >= 1.0 else 'MISSED'}", flush=True)
    print(f"{'error type':22s}" + "".join(f" {r['row'] + ' success [95% CI]':>34s}" for r in rows))
    for kind in sorted({k for r in rows for k in r["success"]}):
        cells = []
        for r in rows:
            hits, n, lo, hi = r["success"].get(kind, (0, 0, float("nan"), float("nan")))
            cells.append(f"{hits}/{n} [{lo:.2f}, {hi:.2f}]")
        print(f"{kind:22s}" + "".join(f" {c:>34s}" for c in cells), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_eval_args(parser)
    print_eval_rows(eval_rows(parser.parse_args()))
