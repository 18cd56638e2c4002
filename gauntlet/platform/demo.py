"""`gauntlet demo`: the main job end to end on an embedded local Ray.

Today it builds a scene database covering every task x variant x error type and runs the
pre-flight check on it; serving and evaluation steps join as those subsystems land.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gauntlet.platform.config_args import option, parse_config


@dataclass(frozen=True)
class DemoConfig:
    """Runs the Gauntlet demo: scene database, pre-flight check (more stages as they land)."""

    out: str = option("demo_out", help="output directory (scene DB, reports)")
    tasks: str = option("lift,stack,square,pick_place_can", help="comma-separated tasks")
    per_combo: int = option(1, help="scenes per task x variant x error type")
    workers: int = option(2, help="simulation processes")
    seed: int = option(0, help="base seed")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DemoConfig, argv, prog="gauntlet demo", description=DemoConfig.__doc__)
    from gauntlet.envs.scene_check import check_report
    from gauntlet.envs.scene_db import SceneDB
    from gauntlet.envs.scenes_cli import GenerateConfig, generate, print_check

    start = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    db_path = out / "scenes"
    print(f"[demo] 1/2 building the scene database at {db_path}", flush=True)
    summary = generate(GenerateConfig(out=str(db_path), tasks=cfg.tasks, per_combo=cfg.per_combo,
                                      workers=cfg.workers, seed=cfg.seed))
    print("[demo] 2/2 pre-flight check of the scene database", flush=True)
    report = check_report(SceneDB.open(db_path))
    print_check(report)
    (out / "scenes_check.json").write_text(json.dumps(report, indent=2))
    print(f"[demo] done in {time.monotonic() - start:.0f} s: {report['total']} scenes "
          f"({len(summary['failed'])} not generated), {report['compatible']} compatible, "
          f"{report['recoverable']} recoverable by the oracle; report in {out / 'scenes_check.json'}",
          flush=True)
    return 0 if report["compatible"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
