"""`gauntlet demo`: the main job end to end on an embedded local Ray (or RAY_ADDRESS).

1. builds a scene database covering every task x variant x error type, plus one nominal scene (the
   untouched start state) per task x variant, with oracle validation;
2. runs the pre-flight check on it;
3. serves the scripted oracle and the tiny VLA on Ray Serve and evaluates both over every scene
   with several rollout actors;
4. writes the report (tables, plots, one HTML page), with each policy's recovery gap (success on the
   nominal scenes minus success on the error-recovery scenes).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gauntlet.runtime.config_args import option, parse_config
from gauntlet.runtime.manifests import write_json


@dataclass(frozen=True)
class DemoConfig:
    """Runs the Gauntlet demo: scenes, pre-flight, Serve + rollout actors, report."""

    out: str = option("demo_out", help="output directory (scene DB, run, report)")
    tasks: tuple[str, ...] = option(("lift", "stack", "square", "pick_place_can"), help="tasks")
    per_combo: int = option(1, help="scenes per task x variant x error type")
    workers: int = option(2, help="simulation processes for scene generation")
    actors: int = option(2, help="rollout actors for the evaluation")
    horizon: int = option(200, help="steps per evaluation episode")
    policies: tuple[str, ...] = option(("scripted", "vla"), help="policies to serve and evaluate")
    seed: int = option(0, help="base seed")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DemoConfig, argv, prog="gauntlet demo", description=DemoConfig.__doc__)
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
    print(f"[demo] 1/4 building the scene database at {db_path}", flush=True)
    summary = generate(GenerateConfig(out=str(db_path), tasks=cfg.tasks, per_combo=cfg.per_combo,
                                      workers=cfg.workers, seed=cfg.seed, nominal=True))
    print("[demo] 2/4 pre-flight check of the scene database", flush=True)
    report = check_report(SceneDB.open(db_path))
    print_check(report)
    write_json(out / "scenes_check.json", report, indent=2)
    run_dir = out / "run"
    policies = cfg.policies
    message = (f"[demo] 3/4 evaluating {', '.join(policies)} over {report['total']} scenes with {cfg.actors} "
               f"rollout actors (policies on Ray Serve)")
    print(message, flush=True)
    result = run_eval(EvalConfig(scenes=str(db_path), policy=policies, out=str(run_dir), actors=cfg.actors,
                                 horizon=cfg.horizon, resume=(run_dir / RUN_MANIFEST).exists()))
    print("[demo] 4/4 writing the report", flush=True)
    built = build_report(run_dir)
    paths = write_report_files(built, run_dir / REPORT_DIR, html=True)
    print(format_summary(built), flush=True)
    message = (f"[demo] done in {time.monotonic() - start:.0f} s: {report['total']} scenes "
               f"({len(summary['failed'])} not generated), {result['total']} episodes; "
               f"report: {paths.get('html', run_dir / 'report')}")
    print(message, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
