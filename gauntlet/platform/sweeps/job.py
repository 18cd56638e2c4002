"""The one skeleton of a `gauntlet sweep NAME` command; every sweep's `main` is `run_job(JOB, argv)`.

A sweep is a `SweepJob`: its flags, its pre-flight and what it runs on Ray Tune. The skeleton does
the rest, in the same order for every sweep: parse the flags; run the pre-flight, which checks every
input before anything is written (an input error is `PROG: message`, exit 2, and leaves no --out);
write OUT/config.json; open the tracker (`--report-to`); start or join Ray; run the sweep, which
writes its own tables; close the tracker and shut down a Ray it started, whatever happened; then the
sweep's `finish` prints its table and gives the exit status (by convention 0 when some trial
measured something, 1 when none did).

This module imports nothing of the robot side and nothing of the fusion benchmark: both kinds of
sweep are built on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from gauntlet.runtime.config_args import parse_config, run_command
from gauntlet.runtime.manifests import write_json
from gauntlet.runtime.tracking import Tracker, open_tracker

# the exit status of a pre-flight input error (a bad flag, a missing file), as every entry point's
INPUT_ERROR_STATUS = 2


class SweepConfig(Protocol):
    """What the skeleton reads of a sweep's flags (a frozen dataclass with at least these fields)."""

    out: str  # output directory: config.json, the sweep's tables, Tune's records
    report_to: str  # where trials and tables are tracked: tensorboard, wandb or none


ConfigT = TypeVar("ConfigT", bound=SweepConfig)
PreparedT = TypeVar("PreparedT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class SweepJob(Generic[ConfigT, PreparedT, ResultT]):
    """One sweep command: the parts `run_job` calls, in its order."""

    # the sweep's word: `gauntlet sweep NAME`, the `[sweep NAME]` log prefix, the tracker's job type
    name: str
    # the frozen dataclass of its flags (their help texts are its --help)
    config_type: type[ConfigT]
    # the first paragraph of its --help
    description: str
    # pre-flight: checks every input and returns what the run needs; raises one of `input_errors`
    prepare: Callable[[ConfigT], PreparedT]
    # the exceptions that are a user's bad input: printed as `PROG: message`, exit 2
    input_errors: tuple[type[Exception], ...]
    # CPUs of an embedded local Ray for this sweep (a joined cluster has its own)
    ray_cpus: Callable[[ConfigT, PreparedT], int]
    # runs the sweep on the current Ray, writes its files into --out, logs its tables to the tracker
    run: Callable[[ConfigT, PreparedT, Tracker], ResultT]
    # after Ray is shut down: prints the result and returns the exit status
    finish: Callable[[ConfigT, PreparedT, ResultT], int]
    # whether Ray workers' output is forwarded to the driver's terminal
    log_to_driver: bool = True

    @property
    def prog(self) -> str:
        return f"gauntlet sweep {self.name}"


def run_job(job: SweepJob[Any, Any, Any], argv: list[str] | None) -> int:
    """The sweep's exit status: argparse's 2 for a bad flag, 2 for a bad input, else `job.finish`'s."""
    config = parse_config(job.config_type, argv, job.prog, job.description)
    return run_command(job.prog, lambda: _run_checked(job, config),
                       dict.fromkeys(job.input_errors, INPUT_ERROR_STATUS))


def _run_checked(job: SweepJob[ConfigT, PreparedT, ResultT], config: ConfigT) -> int:
    prepared = job.prepare(config)  # before anything is written: a bad input leaves no --out behind
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.asdict(config)  # type: ignore[call-overload]
    write_json(out / "config.json", settings, indent=2)
    tracker = open_tracker(config.report_to, out, name=f"{job.name}-{out.resolve().name}",
                           job_type=f"sweep-{job.name}", config=settings)
    from gauntlet.runtime.ray_session import start_ray

    started = start_ray(f"sweep {job.name}", num_cpus=job.ray_cpus(config, prepared),
                        log_to_driver=job.log_to_driver)
    try:
        result = job.run(config, prepared, tracker)
    finally:
        tracker.close()
        if started:
            import ray

            ray.shutdown()
    return job.finish(config, prepared, result)


def tune_run_config(name: str, out: Path, progress: Any) -> Any:
    """Tune's run config of every sweep: records under OUT/tune/NAME, Tune's own console output off (the
    `progress` callback prints one line per trial), and a failed trial is not retried (it is a row)."""
    from ray import tune

    return tune.RunConfig(name=name, storage_path=str(out.resolve() / "tune"), verbose=0, callbacks=[progress],
                          failure_config=tune.FailureConfig(max_failures=0))


def death_reason(result: Any) -> str | None:
    """None for a Tune trial that reported its row; else the last line of why it did not (its process
    crashed or it returned without reporting: a bug or a kill, not an input it reported as bad)."""
    if result.error is None and "status" in (result.metrics or {}):
        return None
    lines = str(result.error or "trial ended without reporting a result").strip().splitlines()
    return lines[-1] if lines else "trial died"
