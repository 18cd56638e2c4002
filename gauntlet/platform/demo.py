"""`gauntlet demo`: the main job end to end on an embedded local Ray (or RAY_ADDRESS).

1. builds a scene database covering every task x variant x error type, plus one nominal scene (the
   untouched start state) per task x variant, with oracle validation;
2. runs the pre-flight check on it;
3. trains a BC-RNN on a few scripted-expert demonstrations of one task (with the object state)
   through `gauntlet train`'s path: `data collect`, `data stats`, Ray Train (about half a minute);
4. evaluates the scripted oracle, an untrained tiny VLA and the trained BC-RNN over every scene with
   several rollout actors (the BC-RNN knows one task's observation: the other tasks' scenes are
   skipped for it and recorded as such), recording a few rollout videos;
5. writes the report (tables, plots, videos, one HTML page), with each policy's recovery gap
   (success on the nominal scenes minus success on the error-recovery scenes).
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gauntlet.envs.injectors import NOMINAL
from gauntlet.runtime.config_args import option, parse_config, run_command
from gauntlet.runtime.manifests import write_json


@dataclass(frozen=True)
class DemoConfig:
    """Runs the Gauntlet demo: scenes, pre-flight, Serve + rollout actors, report."""

    out: str = option("demo_out", help="output directory (scene DB, run, report)")
    tasks: tuple[str, ...] = option(("lift", "stack", "square", "pick_place_can"), help="tasks")
    error_types: tuple[str, ...] = option(("all",), help="error types of the scene database ('all' or names)")
    per_combo: int = option(1, help="scenes per task x variant x error type")
    workers: int = option(2, help="simulation processes for scene generation")
    actors: int = option(2, help="rollout actors for the evaluation")
    horizon: int = option(200, help="steps per evaluation episode")
    policies: tuple[str, ...] = option(("scripted", "vla"), help="policies to evaluate besides the trained one")
    seed: int = option(0, help="base seed")
    train_task: str = option("lift", help="task the demo's BC-RNN is trained on ('' = train nothing)")
    train_demos: int = option(30, help="scripted-expert demonstrations it learns from (half D0, half D1, rounded down)")
    train_steps: int = option(600, help="training steps (batch 32; about 30 s on one core)")
    record_video: int = option(1, help="videos per policy x task x error type (see --video-error-types)")
    video_error_types: tuple[str, ...] = option((NOMINAL, "drop", "object_push", "gripper_stall"),
                                                help="error types recorded, on the trained task")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DemoConfig, argv, prog="gauntlet demo", description=DemoConfig.__doc__)
    from gauntlet.data.dataset_schema import DatasetError
    from gauntlet.platform.train.config import TrainConfigError, TrainRunError

    return run_command("gauntlet demo", lambda: run_demo(cfg), {TrainConfigError: 2, DatasetError: 1, TrainRunError: 1})


def run_demo(cfg: DemoConfig) -> None:
    """The five steps (see the module docstring); what each one found is printed as it finishes."""
    from gauntlet.envs.scene_check import check_report
    from gauntlet.envs.scene_db import SceneDB
    from gauntlet.envs.scenes_cli import GenerateConfig, generate, print_check
    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval
    from gauntlet.platform.eval.status import RUN_MANIFEST
    from gauntlet.platform.report.build import REPORT_DIR, build_report, format_summary, write_report_files

    start = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    db_path = out / "scenes"
    print(f"[demo] 1/5 building the scene database at {db_path}", flush=True)
    summary = generate(GenerateConfig(out=str(db_path), tasks=cfg.tasks, error_types=cfg.error_types,
                                      per_combo=cfg.per_combo, workers=cfg.workers, seed=cfg.seed, nominal=True))
    print("[demo] 2/5 pre-flight check of the scene database", flush=True)
    report = check_report(SceneDB.open(db_path))
    print_check(report)
    write_json(out / "scenes_check.json", report, indent=2)
    run_dir = out / "run"
    policies = cfg.policies
    if cfg.train_task:
        print(f"[demo] 3/5 training a BC-RNN on {cfg.train_demos} expert demonstrations of {cfg.train_task}",
              flush=True)
        policies = (*policies, f"bc_rnn={train_demo_policy(cfg, out / f'bc_rnn_{cfg.train_task}')}")
    message = (f"[demo] 4/5 evaluating {', '.join(policies)} over {report['total']} scenes with {cfg.actors} "
               f"rollout actors (the oracle inside them, the others on Ray Serve)")
    print(message, flush=True)
    result = run_eval(EvalConfig(scenes=str(db_path), policy=policies, out=str(run_dir), actors=cfg.actors,
                                 horizon=cfg.horizon, resume=(run_dir / RUN_MANIFEST).exists(),
                                 policy_tasks=(f"bc_rnn={cfg.train_task}",) if cfg.train_task else (),
                                 record_video=cfg.record_video, video_tasks=(cfg.train_task or cfg.tasks[0],),
                                 video_error_types=cfg.video_error_types))
    print("[demo] 5/5 writing the report", flush=True)
    built = build_report(run_dir)
    paths = write_report_files(built, run_dir / REPORT_DIR, html=True)
    print(format_summary(built), flush=True)
    message = (f"[demo] done in {time.monotonic() - start:.0f} s: {report['total']} scenes "
               f"({len(summary['failed'])} not generated), {result['total']} episodes; "
               f"report: {paths.get('html', run_dir / 'report')}")
    print(message, flush=True)


def train_demo_policy(cfg: DemoConfig, ckpt: Path) -> Path:
    """A BC-RNN trained by `gauntlet train`'s path (collect, stats, Ray Train) on scripted-expert demos
    of `cfg.train_task` with the object state; a finished checkpoint at `ckpt` is kept."""
    from gauntlet.data.collect import CollectConfig, collect_demos
    from gauntlet.data.dataset_schema import INFO_PATH
    from gauntlet.data.stats import StatsConfig, write_stats
    from gauntlet.platform.train.driver import TrainConfig, run_train
    from gauntlet.policies.checkpoints import CONFIG_FILE
    from gauntlet.runtime.ray_session import ray_session

    if (ckpt / CONFIG_FILE).is_file():
        print(f"[demo]   reusing {ckpt}", flush=True)
        return ckpt
    shutil.rmtree(ckpt, ignore_errors=True)  # an unfinished run: train again (seconds)
    demos = ckpt.with_name(f"{ckpt.name}_demos")
    if not (demos / INFO_PATH).is_file():
        # Half D0, half D1. Demo seeds start far from the scene seeds, so the policy is evaluated
        # on starts it never saw.
        collect_demos(CollectConfig(out=str(demos), task=(cfg.train_task,), variant=("D0", "D1"),
                                    episodes=max(cfg.train_demos // 2, 1), object_state=True,
                                    seed=cfg.seed + 10_000, horizon=300))
    write_stats(StatsConfig(dataset=str(demos)), progress=False)
    # One checkpoint and a few reports: each report is a barrier that costs more than a step here.
    train = TrainConfig(dataset=str(demos), out=str(ckpt), policy="bc_rnn", mode="full", steps=cfg.train_steps,
                        batch_size=32, learning_rate=1e-3, weight_decay=0.0, seed=cfg.seed,
                        checkpoint_every=cfg.train_steps, keep_checkpoints=1,
                        log_every=max(cfg.train_steps // 4, 1), report_every=max(cfg.train_steps // 4, 1))
    # Ray for training only: the evaluation starts its own, sized for its actors and replicas.
    with ray_session("demo"):
        summary = run_train(train)
    print(f"[demo]   loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}", flush=True)
    return ckpt


if __name__ == "__main__":
    sys.exit(main())
