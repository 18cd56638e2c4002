"""`gauntlet sweep throughput`: find the fastest loader or evaluation settings that stay above a RAM floor.

Ray Tune runs one configuration at a time (each trial measures throughput and would disturb the
others): `--target loader` measures a training loader's samples/s on `--dataset`, `--target eval` a
short real evaluation's episodes/min (and mean Serve batch size) on `--scenes`. Every trial runs
under a RAM floor: a trial that would push the host's available memory below `--ram-floor-gb` is
stopped from inside (its processes killed) before the kernel's OOM killer acts, and is reported as
`ram_floor` with the memory it saw; the sweep goes on. `--mode grid` tries every combination of
`--knobs`; `--mode ladder` starts from a baseline and moves one knob at a time to its next value,
keeping only improvements beyond `--noise-margin`.

Writes to --out: trials.csv/.parquet (one row per trial), report.md and report.json (the
recommendation: the fastest configuration that stayed above the floor; the ladder's path), Tune's
records and, for eval, each trial's run directory; prints the table at the end. With `--report-to`,
each trial's knobs and measurements and the final tables also go to OUT/tensorboard/ or OUT/wandb/.

    gauntlet sweep throughput --target loader --dataset DS --knobs num_workers=0,1,2 batch_size=32,64 --out runs/tp
    gauntlet sweep throughput --target eval --scenes DB --policy vla --mode ladder --out runs/tp-eval
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.platform.eval.config import EvalConfig
from gauntlet.platform.eval.driver import SERVE_REPLICA_CPUS
from gauntlet.platform.sweeps.job import SweepJob, run_job, tune_run_config
from gauntlet.platform.sweeps.ram_floor import GB, MB
from gauntlet.platform.sweeps.search import (
    GridPlan,
    KnobError,
    Knobs,
    KnobSpec,
    LadderPlan,
    knob_table,
    parse_baseline,
    parse_knobs,
    summarise_plan,
    tune_searcher,
)
from gauntlet.platform.sweeps.throughput_report import (
    RESULT_COLUMNS,
    describe_grid_point,
    describe_knobs,
    describe_ladder_step,
    format_table,
    outcome,
    trial_row,
    trials_table,
    write_report,
)
from gauntlet.platform.sweeps.throughput_trials import (
    EvalTarget,
    LoaderTarget,
    RamLimits,
    RealLoaderFactory,
    ThroughputTarget,
    loader_api,
)
from gauntlet.platform.sweeps.tune_progress import sweep_log, trial_progress
from gauntlet.policies.vla.config import DEFAULT_PRESET
from gauntlet.runtime.config_args import option
from gauntlet.runtime.tracking import REPORT_TO, REPORT_TO_HELP, Tracker

if TYPE_CHECKING:
    import pandas as pd

SWEEP = "throughput"
_TRIAL_DIED = "ERROR (the trial's process died; see the reason column)"
TARGETS = ("eval", "loader")
MODES = ("grid", "ladder")

# What each target can sweep. Eval knobs are `gauntlet eval` flags; loader knobs are LoaderConfig fields.
KNOB_SPECS: dict[str, dict[str, KnobSpec]] = {
    "loader": {s.name: s for s in (
        KnobSpec("num_workers", int, 1, "threads assembling batches"),
        KnobSpec("prefetch_depth", int, 1, "batches prefetched ahead"),
        KnobSpec("decode_workers", int, 1, "image decode threads"),
        KnobSpec("batch_size", int, 1, "samples per batch"),
        KnobSpec("memory_budget_mb", int, 1, "loader memory budget"),
    )},
    "eval": {s.name: s for s in (
        KnobSpec("actors", int, 1, "rollout actors"),
        KnobSpec("max_batch_size", int, 1, "Serve batch size"),
        KnobSpec("batch_wait_timeout_s", float, 0.0, "Serve batch wait"),
        KnobSpec("replicas", int, 1, "Serve replicas"),
    )},
}
# Defaults sized to a 2-core machine: a handful of trials, each a few seconds (loader) or ~1 min (eval).
DEFAULT_KNOBS: dict[str, tuple[str, ...]] = {
    "loader": ("num_workers=1,2", "prefetch_depth=2,4", "decode_workers=1,2", "batch_size=32,64"),
    "eval": ("actors=1,2", "max_batch_size=1,8", "batch_wait_timeout_s=0.005,0.02", "replicas=1"),
}
# `gauntlet eval`'s own defaults, for knobs a sweep leaves out (used to size the embedded Ray)
EVAL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvalConfig) if f.name in ("actors", "replicas")}
# CPUs a trial reserves itself: the loader measures in-process; an eval trial only waits on its driver
TRIAL_CPUS = {"loader": 1.0, "eval": 0.25}


class SweepInputError(ValueError):
    """A bad flag found before any trial runs; the message names the flag."""


def _log(message: str) -> None:
    sweep_log(SWEEP, message)


@dataclass(frozen=True)
class SweepThroughputConfig:
    """Flags of `gauntlet sweep throughput`."""

    # output directory for the tables, the report and Tune's records
    out: str = option(help="output directory (trials table, report, Tune records, eval runs)")
    # what to tune: the training loader or an evaluation
    target: str = option(help="what to tune: `loader` (samples/s) or `eval` (episodes/min)", choices=TARGETS)
    # grid: every combination; ladder: one knob at a time from a baseline, keeping improvements
    mode: str = option("grid", help="grid: all combinations; ladder: one knob at a time, keep improvements",
                       choices=MODES)
    # knob candidate lists, NAME=V1,V2 each; empty means the target's defaults
    knobs: tuple[str, ...] = option((), help="knob values to try, NAME=V1,V2,... each (loader: num_workers, "
                                             "prefetch_depth, decode_workers, batch_size, memory_budget_mb; eval: "
                                             "actors, max_batch_size, batch_wait_timeout_s, replicas); "
                                             "default: a small 2-core set per target", aliases=("--grid",), split_commas=False)
    # ladder start, NAME=V each; default the first value of every knob
    baseline: tuple[str, ...] = option((), help="ladder baseline, NAME=V each (default: first value of each knob)")
    # a ladder move is kept only if it beats the current best by more than this fraction
    noise_margin: float = option(0.03, help="ladder: keep a move only if faster by more than this fraction")
    # host available memory every trial must leave; 0 = automatic
    ram_floor_gb: float = option(0.0, help="host available memory (GB) a trial must not go below; a trial "
                                           "about to is stopped and reported `ram_floor` (0 = 10%% of RAM, >= 1 GB)")
    # per-trial budget: a trial may also not take more than this from what was available at its start
    ram_headroom_gb: float = option(0.0, help="also stop a trial that takes more than this (GB) of the memory "
                                              "available when it started (0 = off)")
    # a trial is stopped once available memory is this close to the floor
    ram_margin_mb: float = option(128.0, help="stop a trial once available memory is this close (MB) to the floor")
    # how often the RAM watcher looks
    ram_interval_s: float = option(0.05, help="RAM watcher sampling period (s)")
    # a trial running longer than this is stopped and reported as an error
    trial_timeout_s: float = option(900.0, help="eval: a trial's evaluation is stopped after this long (s)")
    # CPUs of the embedded local Ray (ignored when RAY_ADDRESS is set)
    num_cpus: int = option(0, help="CPUs for the embedded local Ray; 0 = enough for the largest trial "
                                   "(ignored with RAY_ADDRESS)")
    # --- loader target
    # dataset the loader reads
    dataset: str | None = option(None, help="loader: dataset directory")
    # dataset split the loader draws from
    split: str = option("train", help="loader: dataset split to draw from ('' = every episode)")
    # loader batches drawn before timing starts
    warmup_batches: int = option(3, help="loader: batches before the clock starts")
    # seconds each loader configuration is timed
    measure_s: float = option(5.0, help="loader: seconds each configuration is timed")
    # --- eval target
    # scene database each evaluation runs on
    scenes: str | None = option(None, help="eval: scene database directory")
    # the policy each evaluation deploys
    policy: str = option("vla", help="eval: the --policy target each trial evaluates (NAME[=CHECKPOINT] on "
                                      "Serve; scripted and random run in the actors unless given as deploy=NAME)")
    # episodes per scene in each trial's evaluation
    eval_trials: int = option(1, help="eval: trials per scene in each evaluation")
    # steps per episode
    horizon: int = option(60, help="eval: steps per episode")
    # scenes used (in id order)
    limit: int = option(0, help="eval: at most this many scenes (0 = all)")
    # VLA preset when the policy is `vla` without a checkpoint
    vla_size: str = option(DEFAULT_PRESET, help="eval: VLA preset for `vla` without a checkpoint")
    # CPUs reserved per rollout actor
    actor_cpus: float = option(1.0, help="eval: CPUs reserved per rollout actor")
    # where each trial's knobs and measurements and the final tables are tracked
    report_to: str = option("none", help=REPORT_TO_HELP.replace("RUN/", "OUT/") + "; each trial's knobs and "
                                         "measurements, and the final tables", choices=REPORT_TO)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.ram_floor_gb < 0:
            raise ValueError(f"--ram-floor-gb must be >= 0, got {self.ram_floor_gb}")
        if self.ram_margin_mb < 0 or self.ram_interval_s <= 0 or self.ram_headroom_gb < 0:
            raise ValueError("--ram-margin-mb and --ram-headroom-gb must be >= 0, --ram-interval-s > 0")
        if self.noise_margin < 0:
            raise ValueError(f"--noise-margin must be >= 0, got {self.noise_margin}")
        if self.num_cpus < 0 or self.trial_timeout_s <= 0:
            raise ValueError("--num-cpus must be >= 0 and --trial-timeout-s > 0")
        if self.target == "loader":
            if not self.dataset:
                raise ValueError("--dataset is required with --target loader")
            if self.warmup_batches < 0 or self.measure_s <= 0:
                raise ValueError("--warmup-batches must be >= 0 and --measure-s > 0")
        if self.target == "eval":
            if not self.scenes:
                raise ValueError("--scenes is required with --target eval")
            if self.eval_trials < 1 or self.horizon < 1 or self.limit < 0 or self.actor_cpus <= 0:
                raise ValueError("--eval-trials and --horizon must be >= 1, --limit >= 0, --actor-cpus > 0")

    @property
    def floor_bytes(self) -> int:
        """The RAM floor in bytes (automatic: 10% of total memory, at least 1 GB)."""
        if self.ram_floor_gb > 0:
            return int(self.ram_floor_gb * GB)
        import psutil

        return max(GB, int(0.1 * psutil.virtual_memory().total))

    @property
    def limits(self) -> RamLimits:
        return RamLimits(floor_bytes=self.floor_bytes, margin_bytes=int(self.ram_margin_mb * MB),
                         interval_s=self.ram_interval_s, headroom_bytes=int(self.ram_headroom_gb * GB))

    @property
    def metric(self) -> str:
        return "samples_per_s" if self.target == "loader" else "episodes_per_min"


# ------------------------------------------------------------------------------ pre-flight checks

def knobs_of(config: SweepThroughputConfig) -> Knobs:
    return parse_knobs(config.knobs or DEFAULT_KNOBS[config.target], KNOB_SPECS[config.target], "--knobs")


def plan_of(config: SweepThroughputConfig, knobs: Knobs) -> GridPlan | LadderPlan:
    if config.mode == "grid":
        if config.baseline:
            raise KnobError("--baseline applies to --mode ladder only")
        return GridPlan(knobs)
    baseline = parse_baseline(config.baseline, knobs, KNOB_SPECS[config.target], "--baseline")
    return LadderPlan(knobs, baseline, margin=config.noise_margin)


def check_floor(config: SweepThroughputConfig) -> None:
    """A floor the host is already below (or within the margin of) would stop every trial at once."""
    import psutil

    available = psutil.virtual_memory().available
    floor = config.floor_bytes
    if floor + config.ram_margin_mb * MB >= available:
        raise SweepInputError(
            f"--ram-floor-gb {floor / GB:.2f} (plus --ram-margin-mb {config.ram_margin_mb:g}) is above the memory "
            f"available now ({available / GB:.2f} GB): every trial would stop at once; lower the floor")


def target_of(config: SweepThroughputConfig) -> ThroughputTarget:
    """The measurement, checked: its inputs exist (errors name the flag)."""
    if config.target == "loader":
        from gauntlet.data.dataset_format import DatasetError, open_dataset

        try:
            dataset = open_dataset(config.dataset)
        except DatasetError as exc:
            raise SweepInputError(f"--dataset: {exc}") from None
        try:
            if config.split:
                dataset.split(config.split)
        except DatasetError as exc:
            raise SweepInputError(f"--split: {exc}") from None
        try:
            loader_api()
        except ImportError as exc:
            raise SweepInputError(f"--target loader: the training loader is not available ({exc})") from None
        factory = RealLoaderFactory(dataset=str(Path(config.dataset).resolve()),
                                    settings=(("epochs", 0), ("split", config.split)))
        return LoaderTarget(factory=factory, warmup_batches=config.warmup_batches, measure_s=config.measure_s)
    from gauntlet.envs.env_errors import GauntletEnvError
    from gauntlet.envs.scene_db import SceneDB
    from gauntlet.policies.registry import PolicyRef

    try:
        if SceneDB.open(config.scenes).metadata().empty:
            raise SweepInputError(f"--scenes {config.scenes}: the scene database is empty")
    except GauntletEnvError as exc:
        raise SweepInputError(f"--scenes: {exc}") from None
    try:
        ref = PolicyRef.parse(config.policy.removeprefix("deploy="))
    except ValueError as exc:
        raise SweepInputError(f"--policy: {exc}") from None
    if ref.checkpoint and not Path(ref.checkpoint).exists():
        raise SweepInputError(f"--policy: checkpoint {ref.checkpoint} does not exist")
    return EvalTarget(scenes=str(Path(config.scenes).resolve()), policy=config.policy,
                      # one directory per sweep: a re-run into the same --out must not meet old runs
                      runs_dir=str((Path(config.out) / "eval_runs" / time.strftime("%Y%m%d-%H%M%S")).resolve()),
                      eval_trials=config.eval_trials,
                      horizon=config.horizon, limit=config.limit, vla_size=config.vla_size,
                      actor_cpus=config.actor_cpus, timeout_s=config.trial_timeout_s)


# ------------------------------------------------------------------------------------ the sweep

def run_sweep(config: SweepThroughputConfig, target: ThroughputTarget, plan: GridPlan | LadderPlan,
              limits: RamLimits | None = None, tracker: Tracker | None = None) -> pd.DataFrame:
    """Runs `plan` on Ray Tune (one trial at a time, on the current Ray); one row per trial (each also
    sent to `tracker`)."""
    from ray import tune

    from gauntlet.platform.sweeps.throughput_trials import throughput_trainable

    limits = limits or config.limits
    metric = target.metric
    trainable = tune.with_resources(
        tune.with_parameters(throughput_trainable, target=target, limits=limits),
        {"cpu": TRIAL_CPUS.get(config.target, 1.0)},
    )
    describe = describe_ladder_step if config.mode == "ladder" else describe_grid_point
    progress = trial_progress(SWEEP, plan.total, describe, outcome(metric), _TRIAL_DIED, tracker=tracker,
                              metrics=RESULT_COLUMNS)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=tune_searcher(plan, metric),
            num_samples=plan.max_trials,  # the plan says FINISHED first; this only bounds it
            max_concurrent_trials=1,  # throughput measured beside another trial is noise
            reuse_actors=False,  # a fresh process per trial: no threads or memory left by the last
        ),
        run_config=tune_run_config(f"throughput-{config.target}", Path(config.out), progress),
    )
    size = f"{plan.total} trials" if plan.total else f"at most {plan.max_trials} trials"
    headroom = f", or {limits.headroom_bytes / GB:.2f} GB below what a trial starts with" if limits.headroom_bytes else ""
    _log(f"{config.mode} over {' '.join(knob_table(plan.knobs))}: {size}, one at a time, RAM floor "
         f"{limits.floor_bytes / GB:.2f} GB{headroom}")
    grid = tuner.fit()
    accepted = {s.proposal.index: s.accepted for s in plan.history}
    rows = [trial_row(result, config.mode, metric, accepted) for result in grid]
    return trials_table(rows, list(plan.knobs), metric, config.mode)


@dataclass(frozen=True)
class Prepared:
    """What the pre-flight found: the sweep's knobs, its plan, the checked target and the RAM limits."""

    knobs: Knobs  # candidate values per knob
    plan: GridPlan | LadderPlan  # which configurations run, in which order
    target: ThroughputTarget  # what each trial measures
    limits: RamLimits  # fixed now: an automatic floor must not drift between trials


def _prepare(config: SweepThroughputConfig) -> Prepared:
    knobs = knobs_of(config)
    plan = plan_of(config, knobs)
    check_floor(config)
    return Prepared(knobs=knobs, plan=plan, target=target_of(config), limits=config.limits)


def _ray_cpus(config: SweepThroughputConfig, prepared: Prepared) -> int:
    """CPUs of an embedded Ray: the machine's, and for eval at least what the largest trial places at once."""
    num_cpus = config.num_cpus or os.cpu_count() or 1
    if config.target == "eval" and not config.num_cpus:
        actors = max(prepared.knobs.get("actors", (EVAL_DEFAULTS["actors"],)))
        replicas = max(prepared.knobs.get("replicas", (EVAL_DEFAULTS["replicas"],)))
        need = actors * config.actor_cpus + replicas * SERVE_REPLICA_CPUS + TRIAL_CPUS["eval"]
        num_cpus = max(num_cpus, math.ceil(need))
    return num_cpus


def _run(config: SweepThroughputConfig, prepared: Prepared, tracker: Tracker) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(the trials table, the report object), both written to --out and logged to the tracker."""
    trials = run_sweep(config, prepared.target, prepared.plan, prepared.limits, tracker)
    report = write_report(trials, summarise_plan(prepared.plan), config, list(prepared.knobs), prepared.limits,
                          Path(config.out), getattr(prepared.target, "runs_dir", None))
    tracker.log_table("sweep/trials", trials.to_dict("records"))
    if report["recommended"]:
        tracker.log_table("sweep/recommended", [{**report["recommended"]["knobs"],
                                                 config.metric: report["recommended"][config.metric]}])
    return trials, report


def _finish(config: SweepThroughputConfig, prepared: Prepared, result: tuple[pd.DataFrame, dict[str, Any]]) -> int:
    trials, report = result
    print(format_table(trials, list(prepared.knobs), config.metric), flush=True)
    rec = report["recommended"]
    counts = report["counts"]
    _log(f"{counts['ok']}/{len(trials)} trials ok, {counts['ram_floor']} stopped at the RAM floor, "
         f"{counts['error']} errors; report in {(Path(config.out) / 'report.md').resolve()}")
    if rec:
        _log(f"recommended: {describe_knobs(rec['knobs'])} ({rec[config.metric]:.2f} {config.metric})")
    else:
        _log("no configuration finished above the RAM floor: nothing to recommend")
    return 0 if rec else 1


JOB = SweepJob(
    name=SWEEP, config_type=SweepThroughputConfig, description=__doc__.split("\n\n")[0], prepare=_prepare,
    input_errors=(KnobError, SweepInputError), ray_cpus=_ray_cpus, run=_run, finish=_finish,
    log_to_driver=False,
)


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
