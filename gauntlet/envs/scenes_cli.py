"""`gauntlet scenes generate|check|show`: build, pre-flight and inspect scene databases."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context

from gauntlet.envs.env_errors import GauntletEnvError
from gauntlet.envs.injectors import ERROR_TYPES, NOMINAL, SPECS, get_spec
from gauntlet.envs.scene_db import SceneDB
from gauntlet.envs.tasks import TASKS, VARIANTS, check_variant, get_task
from gauntlet.runtime.config_args import as_tuple, option, parse_config, require_at_least, run_command
from gauntlet.runtime.progress import Progress

ALL_TASKS = tuple(TASKS)


@dataclass(frozen=True)
class GenerateConfig:
    """Builds an error-recovery scene database from scripted-expert rollouts with injected errors."""

    out: str = option(help="scene database directory (created, or appended to if it exists)")
    tasks: tuple[str, ...] = option(ALL_TASKS, help="tasks")
    variants: tuple[str, ...] = option(VARIANTS, help="placement variants")
    error_types: tuple[str, ...] = option(("all",), help="'all' (every injected error type) or error types; "
                                                         f"'{NOMINAL}' asks for nominal scenes (see --nominal), "
                                                         f"so '--error-types {NOMINAL}' writes only those")
    # Off by default: a plain `generate` keeps writing exactly the error-recovery scenes it always did
    # (appending to an existing database must not slip new kinds of rows into it); the demo turns it on.
    nominal: bool = option(False, help=f"also write nominal scenes (category nominal, error type {NOMINAL}): each "
                                       "task's start state after a seeded reset, nothing injected, per_combo per "
                                       "task x variant; the report compares recovery success with success on them")
    per_combo: int = option(1, help="scenes per task x variant x error type")
    seed: int = option(0, help="base seed; scene seeds derive from it and the scene id")
    image_size: int = option(128, help="camera image size of the envs the scenes are for (pixels)")
    workers: int = option(2, help="simulation processes")
    approach_horizon: int = option(300, help="steps the expert may take to reach the injection phase")
    recovery_horizon: int = option(300, help="steps the expert gets to recover (oracle validation)")
    max_attempts: int = option(4, help="seeds tried per scene before it is reported as not generated")
    validate: bool = option(True, help="tag each scene recoverable or not by letting the expert recover")

    def __post_init__(self) -> None:
        for name in ("tasks", "variants", "error_types"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        for t in self.task_list:
            get_task(t)
        for v in self.variant_list:
            check_variant(v)
        for e in self.error_type_list:
            get_spec(e)
        if not self.task_list or not self.variant_list:
            raise ValueError("tasks and variants must not be empty")
        if not self.error_types:
            raise ValueError("error_types must not be empty")
        require_at_least(self, 1, "per_combo", "workers")

    @property
    def task_list(self) -> tuple[str, ...]:
        return self.tasks

    @property
    def variant_list(self) -> tuple[str, ...]:
        return self.variants

    @property
    def error_type_list(self) -> tuple[str, ...]:
        """The injected error types asked for (never NOMINAL)."""
        if "all" in self.error_types:
            return ERROR_TYPES
        return tuple(e for e in self.error_types if e != NOMINAL)

    @property
    def wants_nominal(self) -> bool:
        return self.nominal or NOMINAL in self.error_types


@dataclass(frozen=True)
class CheckConfig:
    """Pre-flight: counts compatible/incompatible/recoverable scenes against the current code."""

    db: str = option(help="scene database directory", positional=True)
    json: bool = option(False, help="print the report as one JSON object")


@dataclass(frozen=True)
class ShowConfig:
    """Prints one scene's metadata."""

    db: str = option(help="scene database directory", positional=True)
    scene_id: str = option(help="the scene's id", positional=True)
    arrays: bool = option(False, help="also list the scene's arrays with their shapes")


def jobs_for(cfg: GenerateConfig) -> list:
    """One `SceneJob` per applicable (task, variant, error type) and k < per_combo, nominal ones first."""
    from gauntlet.envs.scene_generation import SceneJob  # see generate(): keeps the CLI GL-free

    jobs = []
    kinds = ((NOMINAL,) if cfg.wants_nominal else ()) + cfg.error_type_list
    for task in cfg.task_list:
        for variant in cfg.variant_list:
            for error_type in kinds:
                if error_type != NOMINAL and not SPECS[error_type].applies_to(task):
                    continue
                for k in range(cfg.per_combo):
                    jobs.append(SceneJob(task, variant, error_type, k, cfg.seed, cfg.image_size,
                                         cfg.approach_horizon, cfg.recovery_horizon, cfg.max_attempts,
                                         cfg.validate))
    return jobs


def generate(cfg: GenerateConfig, batch_size: int = 8) -> dict:
    """Generates into `cfg.out`; writes in batches so a crash loses at most one batch."""
    # Imported here: building envs configures OpenGL, which only generating needs.
    from gauntlet.envs.scene_generation import _worker_init, generate_scene

    db = SceneDB.create(cfg.out)
    existing = set(db.metadata()["scene_id"])
    jobs = [j for j in jobs_for(cfg) if j.scene_id not in existing]
    message = (f"[scenes] generating {len(jobs)} scenes into {cfg.out} with {cfg.workers} workers "
               f"({len(existing)} already there)")
    print(message, flush=True)
    progress = Progress(len(jobs), "scenes generate", unit="scenes")
    pending, failed, written = [], [], 0
    start = time.monotonic()
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=get_context("spawn"),
                             initializer=_worker_init) as pool:
        futures = {pool.submit(generate_scene, j): j for j in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                record, reason = fut.result()
            except Exception as exc:  # noqa: BLE001 - one bad scene never stops the database
                record, reason = None, f"{type(exc).__name__}: {exc}"
            if record is None:
                failed.append({"scene_id": job.scene_id, "reason": reason})
                print(f"[scenes] not generated: {job.scene_id}: {reason}", flush=True)
            else:
                pending.append(record)
            if len(pending) >= batch_size:
                written += db.add(pending)
                pending = []
            progress.update(extra=f"written={written + len(pending)} failed={len(failed)}")
    written += db.add(pending)
    summary = {"db": cfg.out, "written": written, "failed": failed, "total_in_db": len(db),
               "seconds": round(time.monotonic() - start, 1)}
    message = (f"[scenes] wrote {written} scenes ({len(failed)} not generated) in {summary['seconds']} s; "
               f"database now holds {summary['total_in_db']}")
    print(message, flush=True)
    return summary


def print_check(report: dict) -> None:
    message = (f"scene database {report['db']}: {report['total']} scenes, {report['compatible']} compatible, "
               f"{report['incompatible']} incompatible, {report['recoverable']} recoverable")
    print(message, flush=True)
    for title, key in (("error type", "by_error_type"), ("category", "by_category"), ("task", "by_task"),
                       ("origin", "by_origin")):
        print(f"\n{'by ' + title:<22}{'total':>7}{'compat':>8}{'incompat':>10}{'recov %':>9}", flush=True)
        for name, c in report[key].items():
            frac = "-" if c["recoverable_fraction"] is None else f"{100 * c['recoverable_fraction']:.0f}"
            print(f"  {name:<20}{c['total']:>7}{c['compatible']:>8}{c['incompatible']:>10}{frac:>9}", flush=True)
    for reason, n in report["incompatible_reasons"].items():
        print(f"incompatible: {n} x {reason}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbs = {"generate": GenerateConfig, "check": CheckConfig, "show": ShowConfig}
    if not argv or argv[0] not in verbs:
        print("usage: gauntlet scenes {generate,check,show} ...", file=sys.stderr, flush=True)
        return 2
    verb, rest = argv[0], argv[1:]
    cfg = parse_config(verbs[verb], rest, prog=f"gauntlet scenes {verb}", description=verbs[verb].__doc__)
    return run_command(f"gauntlet scenes {verb}", lambda: _run_verb(cfg), {GauntletEnvError: 1})


def _run_verb(cfg: GenerateConfig | CheckConfig | ShowConfig) -> int:
    """One verb's work; its exit status (a failed generation, an empty database: 1)."""
    if isinstance(cfg, GenerateConfig):
        summary = generate(cfg)
        return 0 if summary["written"] or not summary["failed"] else 1
    db = SceneDB.open(cfg.db)
    if isinstance(cfg, CheckConfig):
        from gauntlet.envs.scene_check import check_report

        if len(db) == 0:
            raise GauntletEnvError(f"{db.table_path}: the database is empty")
        report = check_report(db)
        if cfg.json:
            print(json.dumps(report, indent=2), flush=True)
        else:
            print_check(report)
        return 0
    row = db.row(cfg.scene_id)
    row["injection_params"] = json.loads(row["injection_params"])
    row["env_config"] = json.loads(row["env_config"])
    if cfg.arrays:
        row["arrays"] = {k: list(v.shape) for k, v in db.load_arrays(cfg.scene_id).items()}
    print(json.dumps(row, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
