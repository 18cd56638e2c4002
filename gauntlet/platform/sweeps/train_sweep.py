"""`gauntlet sweep train`: Ray Tune over training-config fields, ASHA on the validation loss, survivors
scored by held-out recovery success.

Each trial is one `gauntlet train` run (`run_train`: Ray Train with checkpoints and `--max-failures`,
so a killed worker resumes from the trial's latest checkpoint) inside a Tune function trainable; Ray
Train's reports reach Tune through `TuneReportCallback`. Every trial holds out `--val-episodes` of the
dataset and reports their loss (`val_loss`) with every report; ASHA stops trials whose validation loss
trails at a rung (one rung per report, the first after `--grace-period` reports). Trials that were not
stopped are evaluated on `--eval-scenes` (the `gauntlet eval` machinery, one run per checkpoint) and
compared with the base, episode by episode (`gauntlet report compare`'s pairing: McNemar's exact test
and Newcombe's paired interval). The base is `--base`, else the trials' training `--base`, else the
first grid point's trial.

A killed sweep driver continues with `--resume` (Tune's `Tuner.restore` of OUT/tune/train): finished
trials keep their results, an interrupted one continues its Ray Train run from its checkpoint, and
evaluation runs already written continue with `gauntlet eval --resume`.

Writes to --out: trials/tNNN/ (each trial's checkpoint), eval/ (evaluation runs), trials.csv, summary.json
and Tune's records; prints the trials table and the best configuration.

    gauntlet sweep train --dataset DS --train="--policy bc_rnn --mode full --steps 200" \\
        --knobs learning_rate=1e-3,3e-3 recovery_fraction=0,0.3 --val-episodes 4 --eval-scenes DB --out runs/st
"""

from __future__ import annotations

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
from gauntlet.platform.sweeps.tune_progress import sweep_log, trial_progress
from gauntlet.platform.train.config import RAY_RUN_NAME, TrainConfig, TrainConfigError
from gauntlet.runtime.config_args import option, parse_config
from gauntlet.runtime.tracking import REPORT_TO, REPORT_TO_HELP

if TYPE_CHECKING:
    from gauntlet.runtime.tracking import Tracker

SWEEP = "train"
TUNE_NAME = "train"  # the Tune experiment under OUT/tune (what --resume restores)
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


class SweepTrainInputError(ValueError):
    """A bad flag found before any trial runs; the message names the flag."""


@dataclass(frozen=True)
class SweepTrainConfig:
    """Flags of `gauntlet sweep train`."""

    # the dataset every trial trains on (its last --val-episodes episodes held out)
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
    val_episodes: int = option(2, help="the dataset's last N episodes are held out; their loss (val_loss) is "
                                       "reported with every report and is what ASHA compares")
    # ASHA: reports before a trial can be stopped
    grace_period: int = option(1, help="ASHA: reports a trial makes before it can be stopped")
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
    resume: bool = option(False, help="continue the sweep in --out (Tune's Tuner.restore): finished trials "
                                      "are kept, interrupted ones continue from their checkpoints")
    # CPUs of an embedded local Ray (0 = this machine's, at least what one trial places)
    num_cpus: int = option(0, help="CPUs of an embedded local Ray (0 = enough for --concurrent trials)")
    # where the trials and tables are tracked
    report_to: str = option("none", help=REPORT_TO_HELP + "; each trial's config and val_loss, the trials table",
                            choices=REPORT_TO)

    def __post_init__(self) -> None:
        for name in ("samples", "val_episodes", "grace_period", "concurrent", "eval_trials", "eval_horizon",
                     "eval_actors"):
            if getattr(self, name) < 1:
                raise SweepTrainInputError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.reduction_factor <= 1:
            raise SweepTrainInputError(f"--reduction-factor: must be > 1, got {self.reduction_factor}")


@dataclass(frozen=True)
class Prepared:
    """What the pre-flight found: the knobs and every trial's checked training config."""

    knobs: Knobs  # candidate values per knob
    points: list[TrialPoint]  # the configurations, in trial order
    max_reports: int  # the most reports any trial makes (ASHA's max_t)


def points_of(config: SweepTrainConfig, knobs: Knobs) -> list[dict[str, Any]]:
    """The configurations to train: the grid in order, or --samples distinct draws from it."""
    grid = GridPlan(knobs)
    combos = [p.knobs for p in iter(grid.propose, None)]
    if config.search == "grid":
        return combos
    rng = np.random.default_rng(config.seed)
    picked = rng.choice(len(combos), size=min(config.samples, len(combos)), replace=False)
    return [combos[i] for i in picked]


def train_config(config: SweepTrainConfig, knobs: dict[str, Any], index: int) -> TrainConfig:
    """Trial `index`'s `gauntlet train` config: --train's flags, the knobs, the sweep-owned fields."""
    out = Path(config.out).resolve() / TRIALS_DIR / f"t{index:03d}"
    argv = [*shlex.split(config.train), "--dataset", str(Path(config.dataset).resolve()), "--out", str(out),
            "--val-episodes", str(config.val_episodes)]
    for name, value in knobs.items():
        argv += [f"--{name.replace('_', '-')}", repr(value)]
    cfg = parse_config(TrainConfig, argv, prog="gauntlet sweep train --train", description="")
    # Trials run with the Tune trial's directory as their working directory: paths must be absolute.
    return dataclasses.replace(cfg, base=str(Path(cfg.base).resolve()) if cfg.base else "")


def _prepare(config: SweepTrainConfig) -> Prepared:
    from gauntlet.platform.train.preflight import preflight

    given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in shlex.split(config.train) if a.startswith("--")}
    owned = sorted(given & set(SWEEP_OWNED))
    if owned:
        raise SweepTrainInputError(f"--train: {', '.join('--' + o.replace('_', '-') for o in owned)} "
                                   "is set by the sweep itself")
    tune_dir = Path(config.out) / "tune" / TUNE_NAME
    if config.resume and not tune_dir.is_dir():
        raise SweepTrainInputError(f"--resume: {config.out} holds no sweep to continue")
    if not config.resume and tune_dir.exists():
        raise SweepTrainInputError(f"--out {config.out}: already holds a sweep; pass --resume to continue it")
    if config.eval_scenes and not Path(config.eval_scenes).is_dir():
        raise SweepTrainInputError(f"--eval-scenes {config.eval_scenes}: no such scene database")
    knobs = parse_knobs(config.knobs, KNOB_SPECS)
    points = []
    for index, values in enumerate(points_of(config, knobs)):
        try:
            cfg = train_config(config, values, index)
            preflight(cfg)  # every configuration's inputs checked before the first trial starts
        except (TrainConfigError, SystemExit) as exc:
            raise SweepTrainInputError(f"--knobs {describe_point(values)}: {exc}") from None
        points.append(TrialPoint(index, values, cfg))
    max_reports = max(p.train.steps for p in points)  # a report holds at least one step
    if config.grace_period > max_reports:
        raise SweepTrainInputError(f"--grace-period {config.grace_period}: no trial reports that often "
                                   f"(at most {max_reports} steps)")
    return Prepared(knobs, points, max_reports)


def _ray_cpus(config: SweepTrainConfig, prepared: Prepared) -> int:
    one = max(math.ceil(p.train.workers * p.train.cpus_per_worker) for p in prepared.points)
    return config.num_cpus or max(os.cpu_count() or 1, math.ceil((one + TRIAL_CPUS) * config.concurrent)
                                  + config.eval_actors + 1)


def train_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: one `gauntlet train` run, resumed from its checkpoint when it has one (a trial
    restarted by `--resume`); Ray Train's reports reach Tune through TuneReportCallback. A run that
    already finished is reported, not retrained."""
    import shutil

    from ray.tune.integration.ray_train import TuneReportCallback

    from gauntlet.platform.train.driver import run_train

    cfg = TrainConfig(**config["point"]["train"])
    summary = cfg.train_dir / "summary.json"
    if summary.is_file():
        # Trained to the end before a killed driver recorded it: report the run's last numbers, train nothing.
        from ray import tune

        last = json.loads(summary.read_text())["metrics"]
        tune.report({k: v for k, v in last.items() if k != "steps"})
        return
    started = (cfg.train_dir / "run.json").is_file()
    if started and not (cfg.train_dir / RAY_RUN_NAME).is_dir():
        shutil.rmtree(cfg.train_dir)  # stopped before Ray Train wrote anything: start over
        started = False
    run_train(dataclasses.replace(cfg, resume=started), callbacks=[TuneReportCallback()])


def _tuner(config: SweepTrainConfig, prepared: Prepared, tracker: Tracker) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_resources(train_trial, {"cpu": TRIAL_CPUS})
    progress = trial_progress(SWEEP, len(prepared.points), lambda c: describe_point(c["point"]["knobs"]),
                              outcome, _TRIAL_DIED, tracker=tracker, metrics=(METRIC, "step"))
    tune_dir = Path(config.out).resolve() / "tune" / TUNE_NAME
    if config.resume:
        return tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=True)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=prepared.max_reports,
                              grace_period=config.grace_period, reduction_factor=config.reduction_factor)
    space = [{"index": p.index, "knobs": p.knobs, "train": dataclasses.asdict(p.train)} for p in prepared.points]
    return tune.Tuner(
        trainable,
        param_space={"point": tune.grid_search(space)},
        tune_config=tune.TuneConfig(metric=METRIC, mode="min", scheduler=scheduler,
                                    max_concurrent_trials=config.concurrent),
        run_config=tune_run_config(TUNE_NAME, Path(config.out), progress),
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
