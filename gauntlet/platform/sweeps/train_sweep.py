"""`gauntlet sweep train`: Ray Tune over training-config fields, ASHA on the validation loss, survivors
scored by held-out recovery success.

Each trial is one `gauntlet train` run (`run_train`: Ray Train with checkpoints and `--max-failures`,
so a killed worker resumes from the trial's latest checkpoint) inside a Tune function trainable; Ray
Train's reports reach Tune through `TuneReportCallback`. Every trial holds out `--val-episodes` of the
dataset and reports their loss (`val_loss`) with every report; ASHA stops trials whose validation loss
trails at a rung (rungs at `--grace-period` x `--reduction-factor`^k reports, before a trial's last
report: stopping it there would save nothing). Trials that were not
stopped are evaluated on `--eval-scenes` (the `gauntlet eval` machinery, one run per checkpoint) and
compared with the base, episode by episode (`gauntlet report compare`'s pairing: McNemar's exact test
and Newcombe's paired interval). The base is `--base`, else the trials' training `--base`, else the
first grid point's trial.

A killed sweep driver continues with `--resume` and the same flags (OUT/config.json; a flag that
differs is refused by name): a fresh Tuner runs the same points under OUT/tune/train-resumeN (Tune's
own saved state is never loaded: it is pickled). A finished trial replays its recorded reports and
trains nothing, an interrupted one replays them and continues its Ray Train run from its checkpoint
(`train_sweep_trial`), and evaluation runs already written continue with `gauntlet eval --resume`.

Writes to --out: trials/tNNN/ (each trial's checkpoint), eval/ (evaluation runs), trials.csv, summary.json
and Tune's records; prints the trials table and the best configuration.

    gauntlet sweep train --dataset DS --train="--policy bc_rnn --mode full --steps 200" \\
        --knobs learning_rate=1e-3,3e-3 recovery_fraction=0,0.3 --val-episodes 4 --eval-scenes DB --out runs/st
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.platform.sweeps.job import SweepJob, run_job, tune_run_config
from gauntlet.platform.sweeps.search import GridPlan, KnobError, Knobs, KnobSpec, knob_table, parse_knobs
from gauntlet.platform.sweeps.train_sweep_report import (
    TrialPoint,
    describe_point,
    finish_table,
    outcome,
    score_survivors,
    trial_rows,
)
from gauntlet.platform.sweeps.train_sweep_trial import REPORT, train_trial
from gauntlet.platform.sweeps.tune_progress import sweep_log, trial_progress
from gauntlet.platform.train.config import TrainConfig, TrainConfigError
from gauntlet.platform.train.reporting import report_steps
from gauntlet.runtime.config_args import add_config_arguments, config_from_namespace, option, require_at_least
from gauntlet.runtime.manifests import ManifestError, read_json
from gauntlet.runtime.run_identity import differing_fields
from gauntlet.runtime.tracking import REPORT_TO, REPORT_TO_HELP

if TYPE_CHECKING:
    from gauntlet.runtime.tracking import Tracker

SWEEP = "train"
TUNE_NAME = "train"  # the Tune experiment under OUT/tune; a resumed sweep's are train-resume1, 2, ...
TRIALS_DIR = "trials"  # OUT/trials/tNNN: each trial's `gauntlet train --out`
METRIC = "val_loss"  # what ASHA compares (lower is better)
SEARCHES = ("grid", "random")
TRIAL_CPUS = 0.1  # the trial's own process only waits on Ray Train; its workers reserve their CPUs
_TRIAL_DIED = "ERROR (the trial's process died)"

# TrainConfig fields a sweep may vary, with their smallest sensible value.
KNOB_SPECS: dict[str, KnobSpec] = {s.name: s for s in (
    KnobSpec("learning_rate", float, 0.0, "peak learning rate"),
    KnobSpec("lora_rank", int, 0, "adapter rank (0 = the model config's)"),
    KnobSpec("steps", int, 1, "optimizer steps"),
    KnobSpec("batch_size", int, 1, "global batch size"),
    KnobSpec("recovery_fraction", float, 0.0, "share of each batch from recovery-tagged episodes"),
    KnobSpec("weight_decay", float, 0.0, "AdamW weight decay"),
    KnobSpec("warmup_steps", int, 0, "warmup steps"),
    KnobSpec("ema_decay", float, 0.0, "EMA of the weights"),
)}
# Flags of `gauntlet train` a trial's --train may not set: the sweep owns them.
SWEEP_OWNED = ("dataset", "out", "resume", "val_episodes")
# Flags a resumed sweep may change: how it runs, not what it measures.
RESUME_FREE = ("resume", "num_cpus", "concurrent", "report_to")


class SweepTrainInputError(ValueError):
    """A bad flag found before any trial runs; the message names the flag."""


@dataclass(frozen=True)
class SweepTrainConfig:
    """Flags of `gauntlet sweep train`."""

    # the dataset every trial trains on (--val-episodes of its episodes held out: data/sampling.py)
    dataset: str = option(help="dataset directory (as for gauntlet train --dataset)")
    # output directory: trials, evaluation runs, tables, Tune's records
    out: str = option(help="output directory (trials/, eval/, trials.csv, summary.json, tune/)")
    # knob candidate lists, NAME=V1,V2 each
    knobs: tuple[str, ...] = option(help="training fields to sweep, NAME=V1,V2,... each: "
                                         + ", ".join(KNOB_SPECS), split_commas=False)
    # the other `gauntlet train` flags, the same for every trial
    train: str = option("", help="other `gauntlet train` flags for every trial, one quoted string "
                                 "(e.g. \"--policy bc_rnn --mode full --steps 200 --base CKPT\")")
    # grid: every combination; random: --samples combinations drawn from the lists
    search: str = option("grid", help="grid: every combination, first knob slowest; random: --samples "
                                      "combinations drawn from the knob lists (seeded by --seed)", choices=SEARCHES)
    # random search: how many configurations
    samples: int = option(4, help="random search: configurations drawn")
    # random search: the generator's seed
    seed: int = option(0, help="random search: seed of the draws")
    # held-out episodes of every trial: their loss is what ASHA compares
    val_episodes: int = option(2, help="N of the dataset's episodes are held out (its valid split's, else an even "
                                       "stride of the trained split, recovery and nominal in proportion); "
                                       "their loss (val_loss) is "
                                       "reported with every report and is what ASHA compares")
    # ASHA: reports before a trial can be stopped (the first rung)
    grace_period: int = option(1, help="ASHA: reports a trial makes before it can be stopped (a report every "
                                       "--report-every steps and at every checkpoint; a trial is never stopped "
                                       "at its last report, so the trials' report count means no stopping)")
    # ASHA: 1/this of the trials at a rung go on
    reduction_factor: float = option(2.0, help="ASHA: the top 1/this of the trials at each rung continue")
    # trials training at once
    concurrent: int = option(1, help="trials training at once (each uses its --workers x --cpus-per-worker CPUs)")
    # scene database the survivors are evaluated on; empty: no scoring
    eval_scenes: str = option("", help="scene database (held-out scenes) the surviving checkpoints are "
                                       "evaluated on (empty: rank by val_loss only)")
    # comparison base checkpoint; empty: the trials' training --base, else the first grid point's trial
    base: str = option("", help="checkpoint the survivors' success is paired against (default: the trials' "
                                "--base in --train, else the first configuration's trial)")
    # evaluation: trials per scene
    eval_trials: int = option(1, help="evaluation trials per scene")
    # evaluation: steps per episode
    eval_horizon: int = option(300, help="evaluation steps per episode")
    # evaluation: at most this many scenes (0 = all)
    eval_limit: int = option(0, help="evaluate on at most this many scenes (0 = all), in id order")
    # evaluation: rollout actors
    eval_actors: int = option(1, help="evaluation rollout actors")
    # continue a killed sweep
    resume: bool = option(False, help="continue the sweep in --out, given the same flags: finished trials are "
                                      "kept, interrupted ones continue from their checkpoints")
    # CPUs of an embedded local Ray (0 = this machine's, at least what one trial places)
    num_cpus: int = option(0, help="CPUs of an embedded local Ray (0 = enough for --concurrent trials)")
    # where the trials and tables are tracked
    report_to: str = option("none", help=REPORT_TO_HELP.replace("RUN/", "OUT/") + "; each trial's config and "
                                         "val_loss, the trials table",
                            choices=REPORT_TO)

    def __post_init__(self) -> None:
        require_at_least(self, 1, "samples", "val_episodes", "grace_period", "concurrent", "eval_trials",
                         "eval_horizon", "eval_actors", error=SweepTrainInputError, as_flags=True)
        if self.reduction_factor <= 1:
            raise SweepTrainInputError(f"--reduction-factor: must be > 1, got {self.reduction_factor}")


@dataclass(frozen=True)
class Prepared:
    """What the pre-flight found: the knobs and every trial's checked training config."""

    knobs: Knobs  # candidate values per knob
    points: list[TrialPoint]  # the configurations, in trial order
    max_reports: int  # the most reports any trial makes


def points_of(config: SweepTrainConfig, knobs: Knobs) -> list[dict[str, Any]]:
    """The configurations to train: the grid in order, or --samples distinct draws from it."""
    grid = GridPlan(knobs)
    combos = [p.knobs for p in iter(grid.propose, None)]
    if config.search == "grid":
        return combos
    rng = np.random.default_rng(config.seed)
    picked = rng.choice(len(combos), size=min(config.samples, len(combos)), replace=False)
    return [combos[i] for i in picked]


class _TrainFlags(argparse.ArgumentParser):
    """`gauntlet train`'s parser for --train's string: a bad flag is an input error naming --train
    (argparse would print a usage of its own and exit)."""

    def error(self, message: str) -> Any:
        raise SweepTrainInputError(f"--train: {message}")


def train_config(config: SweepTrainConfig, knobs: dict[str, Any], index: int) -> TrainConfig:
    """Trial `index`'s `gauntlet train` config: --train's flags, the knobs, the sweep-owned fields."""
    out = Path(config.out).resolve() / TRIALS_DIR / f"t{index:03d}"
    argv = [*shlex.split(config.train), "--dataset", str(Path(config.dataset).resolve()), "--out", str(out),
            "--val-episodes", str(config.val_episodes)]
    for name, value in knobs.items():
        argv += [f"--{name.replace('_', '-')}", repr(value)]
    parser = _TrainFlags(prog="gauntlet sweep train --train", add_help=False)
    add_config_arguments(parser, TrainConfig)
    cfg = config_from_namespace(TrainConfig, parser.parse_args(argv))
    # Trials run with the Tune trial's directory as their working directory: paths must be absolute.
    return dataclasses.replace(cfg, base=str(Path(cfg.base).resolve()) if cfg.base else "")


def _checked(config: SweepTrainConfig, knobs: dict[str, Any], index: int) -> TrainConfig | str:
    """The trial's checked config, or why it is refused (the pre-flight's message)."""
    from gauntlet.platform.train.preflight import preflight

    try:
        cfg = train_config(config, knobs, index)
        preflight(cfg)  # every configuration's inputs checked before the first trial starts
    except (TrainConfigError, ValueError) as exc:
        if isinstance(exc, SweepTrainInputError):
            raise
        return str(exc)
    return cfg


def _check_resume(config: SweepTrainConfig) -> None:
    """--resume continues a sweep only with the flags it was started with (OUT/config.json)."""
    tune_dir = Path(config.out) / "tune" / TUNE_NAME
    if not config.resume:
        if tune_dir.exists():
            raise SweepTrainInputError(f"--out {config.out}: already holds a sweep; pass --resume to continue it")
        return
    if not tune_dir.is_dir():
        raise SweepTrainInputError(f"--resume: {config.out} holds no sweep to continue")
    try:
        started = read_json(Path(config.out) / "config.json", "sweep config")
    except ManifestError as exc:
        raise SweepTrainInputError(f"--resume: {exc}") from None
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    keep = {k: v for k, v in started.items() if k not in RESUME_FREE} if isinstance(started, dict) else {}
    diff = differing_fields(keep, {k: v for k, v in now.items() if k not in RESUME_FREE})
    if diff:
        flags = ", ".join(f"--{d.replace('_', '-')}" for d in diff)
        raise SweepTrainInputError(f"--resume: {config.out} was started with other flags (differs in: {flags}); "
                                   "resume it with the same flags or choose another --out")


def _check_held_out(config: SweepTrainConfig) -> None:
    """--eval-scenes must be scenes the training data never started a recovery episode from."""
    from gauntlet.data.dataset_reader import open_dataset
    from gauntlet.data.dataset_schema import DatasetError
    from gauntlet.envs.scene_db import SceneDB, SceneDBError

    try:
        meta = SceneDB.open(config.eval_scenes).metadata()
    except SceneDBError as exc:
        raise SweepTrainInputError(f"--eval-scenes: {exc}") from None
    evaluated = set(meta["scene_id"].dropna()) | set(meta.get("source_scene_id", meta["scene_id"]).dropna())
    try:
        trained = {s for s in open_dataset(config.dataset).episodes["scene_id"] if s}
    except DatasetError as exc:
        raise SweepTrainInputError(f"--dataset: {exc}") from None
    shared = sorted(evaluated & trained)
    if shared:
        raise SweepTrainInputError(f"--eval-scenes {config.eval_scenes}: {len(shared)} of its scenes start "
                                   f"episodes of --dataset {config.dataset} (e.g. {', '.join(shared[:3])}); "
                                   "evaluate on scenes held out from the training data")


def _prepare(config: SweepTrainConfig) -> Prepared:
    given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in shlex.split(config.train) if a.startswith("--")}
    owned = sorted(given & set(SWEEP_OWNED))
    if owned:
        raise SweepTrainInputError(f"--train: {', '.join('--' + o.replace('_', '-') for o in owned)} "
                                   "is set by the sweep itself")
    _check_resume(config)
    if not Path(config.dataset).is_dir():
        raise SweepTrainInputError(f"--dataset {config.dataset}: no such dataset directory")
    if config.eval_scenes:
        _check_held_out(config)
    knobs = parse_knobs(config.knobs, KNOB_SPECS)
    unswept = _checked(config, {}, 0)  # --train's own error, if it has one, is not a knob's
    points = []
    for index, values in enumerate(points_of(config, knobs)):
        cfg = _checked(config, values, index)
        if isinstance(cfg, str):
            where = "--train" if cfg == unswept else f"--knobs {describe_point(values)}"
            raise SweepTrainInputError(f"{where}: {cfg}")
        points.append(TrialPoint(index, values, cfg))
    reports = {p.index: len(report_steps(p.train)) for p in points}
    max_reports = max(reports.values())
    if config.grace_period > max_reports:
        longest = points[max(reports, key=reports.get)].train
        raise SweepTrainInputError(
            f"--grace-period {config.grace_period}: no trial reports that often (at most {max_reports} reports: "
            f"--steps {longest.steps}, a report every --report-every {longest.report_every} steps and at every "
            f"--checkpoint-every {longest.checkpoint_every})")
    return Prepared(knobs, points, max_reports)


def _ray_cpus(config: SweepTrainConfig, prepared: Prepared) -> int:
    one = max(math.ceil(p.train.workers * p.train.cpus_per_worker) for p in prepared.points)
    return config.num_cpus or max(os.cpu_count() or 1, math.ceil((one + TRIAL_CPUS) * config.concurrent)
                                  + config.eval_actors + 1)


def experiment_name(config: SweepTrainConfig) -> str:
    """OUT/tune/NAME of this run of the sweep: TUNE_NAME, then train-resume1, 2, ... for each --resume."""
    if not config.resume:
        return TUNE_NAME
    tune_dir = Path(config.out) / "tune"
    return next(n for n in (f"{TUNE_NAME}-resume{k}" for k in range(1, 10**6)) if not (tune_dir / n).exists())


def _scheduler(config: SweepTrainConfig, prepared: Prepared) -> Any:
    """ASHA with rungs before the trials' last report (a stop there saves nothing and would cut the
    trial's artifact short); None, no stopping, when the grace period is the trials' report count."""
    from ray.tune.schedulers import ASHAScheduler

    if config.grace_period >= prepared.max_reports:
        return None
    return ASHAScheduler(time_attr=REPORT, max_t=prepared.max_reports - 1, grace_period=config.grace_period,
                         reduction_factor=config.reduction_factor, stop_last_trials=False)


def _tuner(config: SweepTrainConfig, prepared: Prepared, tracker: Tracker) -> Any:
    from ray import tune

    trainable = tune.with_resources(train_trial, {"cpu": TRIAL_CPUS})
    progress = trial_progress(SWEEP, len(prepared.points), lambda c: describe_point(c["point"]["knobs"]),
                              outcome, _TRIAL_DIED, tracker=tracker, metrics=(METRIC, "step"))
    space = [{"index": p.index, "knobs": p.knobs, "train": dataclasses.asdict(p.train)} for p in prepared.points]
    return tune.Tuner(
        trainable,
        param_space={"point": tune.grid_search(space)},
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=_scheduler(config, prepared),
                                    max_concurrent_trials=config.concurrent),
        run_config=tune_run_config(experiment_name(config), Path(config.out), progress),
    )


def _run(config: SweepTrainConfig, prepared: Prepared, tracker: Tracker) -> dict[str, Any]:
    import pandas as pd

    verb = "resuming" if config.resume else "starting"
    sweep_log(SWEEP, f"{verb} {config.search} over {' '.join(knob_table(prepared.knobs))}: {len(prepared.points)} "
                     f"trials, {config.concurrent} at a time, ASHA on {METRIC} (grace {config.grace_period}, "
                     f"reduction {config.reduction_factor:g})")
    grid = _tuner(config, prepared, tracker).fit()
    rows = trial_rows(grid, prepared.points)
    scored = score_survivors(config, prepared.points, rows) if config.eval_scenes else None
    result = finish_table(config, pd.DataFrame(rows), list(prepared.knobs), scored)
    tracker.log_table("sweep/trials", result["table"].to_dict("records"))
    return result


def _finish(config: SweepTrainConfig, prepared: Prepared, result: dict[str, Any]) -> int:
    print(result["text"], flush=True)
    for line in result["lines"]:
        sweep_log(SWEEP, line)
    return 0 if result["best"] else 1


JOB = SweepJob(
    name=SWEEP, config_type=SweepTrainConfig, description=__doc__.split("\n\n")[0], prepare=_prepare,
    input_errors=(KnobError, SweepTrainInputError), ray_cpus=_ray_cpus, run=_run, finish=_finish,
    log_to_driver=False,
)


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
