"""An evaluation run directory's small files, and RUN/status.json: the live progress of a run.

`EvalStatus` is the one definition of status.json: the eval driver writes it (through `StatusLine`,
which also prints the progress line and, with `--report-to`, sends the same numbers and the final
tables to the run's tracker) and readers such as the throughput sweep read it back with
`EvalStatus.read`, never by hand.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gauntlet.platform.eval.results import PERMANENT, TRANSIENT, skip_cause
from gauntlet.runtime.manifests import ManifestError, read_json, write_json
from gauntlet.runtime.progress import format_duration
from gauntlet.runtime.tracking import NullTracker, Tracker

RUN_MANIFEST = "run.json"  # identity + config of the run (what --resume checks)
STATUS_FILE = "status.json"  # live progress, rewritten atomically as episodes finish
SERVING_STATS_FILE = "serving_stats.json"  # what the policy replicas saw (batch sizes, latencies)
RUNNING, FINISHED = "running", "finished"  # EvalStatus.state values
# The skip reason of an episode whose policy could not be reached (episode.PolicyUnavailableError).
UNREACHABLE = "PolicyUnavailableError"


class StatusError(ValueError):
    """RUN/status.json is missing, unreadable or not a status; the message names the file."""


@dataclass(frozen=True)
class EvalStatus:
    """RUN/status.json: how far a run got (rewritten atomically as episodes finish)."""

    state: str  # RUNNING while episodes remain, FINISHED once every key is recorded
    done: int  # episodes recorded, skipped ones and those of earlier (resumed) runs included
    total: int  # episodes the run holds: scenes x policies x trials
    skipped: int = 0  # episodes recorded as skipped by this invocation
    # Of those, skipped for a transient reason (policy unreachable, timeout, actor died): `--resume`
    # runs them again; the rest are permanent (environment or policy/task mismatch, restore failed).
    skipped_transient: int = 0
    success_rate: float | None = None  # over episodes this invocation ran; None until one ran
    episodes_per_min: float = 0.0  # this invocation's rate since its first dispatch
    eta_s: float | None = None  # time left at that rate; None while the rate is unknown
    elapsed_s: float = 0.0  # seconds since this invocation's first dispatch
    # Once FINISHED: per policy label, its episodes, how many ran, skips counted by cause, and how
    # many of its skips are transient and permanent (over the whole run, resumed invocations included).
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Once FINISHED: why the run did not give every policy a result (the exit status is then 1).
    problems: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    def write(self, run_dir: Path | str) -> Path:
        return write_json(Path(run_dir) / STATUS_FILE, asdict(self), indent=2)

    @classmethod
    def read(cls, run_dir: Path | str) -> EvalStatus:
        """The status of RUN; StatusError naming the file when it is missing or malformed."""
        path = Path(run_dir) / STATUS_FILE
        try:
            body = read_json(path, "status")
        except ManifestError as exc:
            raise StatusError(str(exc)) from None
        names = {f.name for f in fields(cls)}
        if not isinstance(body, dict) or not {"state", "done", "total"} <= set(body):
            raise StatusError(f"{path}: not an evaluation status (needs state, done, total)")
        try:
            return cls(**{k: v for k, v in body.items() if k in names})
        except TypeError as exc:
            raise StatusError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class PolicyOutcome:
    """What a finished run holds for one policy."""

    episodes: int  # result rows of the policy
    ran: int  # episodes that ran (success or not)
    skip_reasons: dict[str, int]  # skip cause -> episodes
    successes: int = 0  # episodes that ran and succeeded
    transient: int = 0  # skipped episodes that `--resume` runs again
    permanent: int = 0  # skipped episodes that the same scene, policy and code would skip again

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.ran if self.ran else None

    @property
    def unreachable(self) -> int:
        return self.skip_reasons.get(UNREACHABLE, 0)

    def problem(self, policy: str) -> str | None:
        """Why this policy's result is not usable, or None when it is."""
        reasons = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skip_reasons.items(), key=lambda kv: -kv[1]))
        if self.episodes and not self.ran:
            return f"{policy}: every one of its {self.episodes} episodes was skipped ({reasons})"
        if self.unreachable:
            return f"{policy}: could not be reached for {self.unreachable} of {self.episodes} episodes"
        return None


def policy_outcomes(rows: Any) -> dict[str, PolicyOutcome]:
    """Per policy, from a results frame as ResultsStore.read gives it (policy, skipped, skip_reason,
    skip_kind columns)."""
    outcomes = {}
    for policy, group in rows.groupby("policy", sort=False):
        skipped = group[group["skipped"]]
        causes = Counter(skip_cause(str(r)) for r in skipped["skip_reason"])
        kinds = Counter(str(k) for k in skipped["skip_kind"])
        successes = int((group["success"].astype(bool) & ~group["skipped"].astype(bool)).sum())
        outcomes[str(policy)] = PolicyOutcome(episodes=len(group), ran=int(len(group) - len(skipped)),
                                              skip_reasons=dict(causes), successes=successes,
                                              transient=kinds[TRANSIENT], permanent=kinds[PERMANENT])
    return outcomes


def read_serving_stats(run_dir: Path | str) -> dict[str, dict[str, Any]]:
    """RUN/serving_stats.json: policy name -> what its replicas saw; {} when the run deployed nothing."""
    try:
        body = read_json(Path(run_dir) / SERVING_STATS_FILE, "serving stats")
    except ManifestError:
        return {}
    return body if isinstance(body, dict) else {}


def write_serving_stats(run_dir: Path | str, stats: dict[str, dict[str, Any]]) -> Path:
    return write_json(Path(run_dir) / SERVING_STATS_FILE, stats, indent=2)


class StatusLine:
    """One unbuffered progress line per update, mirrored into RUN/status.json and the run's tracker
    (`--report-to`: the same numbers as scalars at step = episodes done, the final tables at the end)."""

    def __init__(self, run_dir: Path, total: int, already: int, tracker: Tracker | None = None):
        self.run_dir = run_dir
        self.tracker: Tracker = tracker or NullTracker()
        self.total = total
        self.done = already
        self.started_with = already
        self.skipped = 0
        self.transient = 0  # of `skipped`, transient skips
        self.successes = 0
        self.ran = 0
        self.start = time.monotonic()
        self._last = 0.0  # when the last line was printed
        self._last_done = -1  # episodes done at that time

    def restart_clock(self) -> None:
        """Rates from the first dispatch, not from Ray/Serve start-up."""
        self.start = time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        self.done += 1
        if row["skipped"]:
            self.skipped += 1
            self.transient += int(row["skip_kind"] == TRANSIENT)
        else:
            self.ran += 1
            self.successes += int(row["success"])

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.ran if self.ran else None

    def snapshot(self, state: str = RUNNING, outcomes: dict[str, PolicyOutcome] | None = None) -> EvalStatus:
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.started_with) / elapsed * 60 if elapsed > 0 else 0.0
        eta_s = (self.total - self.done) / (rate / 60) if rate > 0 else None
        outcomes = outcomes or {}
        problems = [p for name, o in outcomes.items() if (p := o.problem(name))]
        return EvalStatus(state=state, done=self.done, total=self.total, skipped=self.skipped,
                          skipped_transient=self.transient,
                          success_rate=self.success_rate, episodes_per_min=rate, eta_s=eta_s, elapsed_s=elapsed,
                          policies={name: {**asdict(o), "unreachable": o.unreachable} for name, o in outcomes.items()},
                          problems=problems)

    def finish(self, outcomes: dict[str, PolicyOutcome]) -> EvalStatus:
        """The final status: written, and summarised per policy and skip reason in the log."""
        status = self.snapshot(FINISHED, outcomes)
        self.emit(force=True, state=FINISHED, final=status)
        for name, o in outcomes.items():
            reasons = "; ".join(f"{cause}: {n}" for cause, n in sorted(o.skip_reasons.items(), key=lambda kv: -kv[1]))
            kinds = (f" ({o.transient} transient: `--resume` runs them again; {o.permanent} permanent)"
                     if reasons else "")
            print(f"[eval] {name}: {o.ran}/{o.episodes} episodes ran" + (f", skipped: {reasons}" if reasons else "")
                  + kinds, flush=True)
        for problem in status.problems:
            print(f"[eval] PROBLEM {problem}", flush=True)
        self._track_final(outcomes)
        self.close()
        return status

    def _track_final(self, outcomes: dict[str, PolicyOutcome]) -> None:
        """The final tables: per policy, and per policy x task x error type with Wilson CIs (the
        report's numbers, so a dashboard and `gauntlet report` never disagree)."""
        if isinstance(self.tracker, NullTracker):
            return
        self.tracker.log_table("eval/policies", [
            {"policy": name, "episodes": o.episodes, "ran": o.ran, "skipped": o.episodes - o.ran,
             "skipped_transient": o.transient, "skipped_permanent": o.permanent, "successes": o.successes,
             "success_rate": o.success_rate} for name, o in outcomes.items()])
        from gauntlet.platform.eval.results import ResultsStore
        from gauntlet.platform.report.tables import success_table

        rows = ResultsStore(self.run_dir).read()
        if len(rows):
            cells = success_table(rows, ["policy", "task", "error_type", "category"])
            self.tracker.log_table("eval/success_by_policy_task_error_type", cells.to_dict("records"))

    def close(self) -> None:
        """Closes the tracker (idempotent; `finish` does it, the driver again on its way out)."""
        self.tracker.close()
        self.tracker = NullTracker()

    def emit(self, force: bool = False, state: str = RUNNING, final: EvalStatus | None = None) -> None:
        """Prints and writes the status: at most every 2 s, and every 30 s even without news."""
        now = time.monotonic()
        changed = self.done != self._last_done
        if not force and (now - self._last < 2.0 or (not changed and now - self._last < 30.0)):
            return
        self._last, self._last_done = now, self.done
        status = final or self.snapshot(state)
        success = math.nan if status.success_rate is None else status.success_rate
        eta_s = math.inf if status.eta_s is None else status.eta_s
        transient = f" ({status.skipped_transient} transient)" if status.skipped_transient else ""
        print(f"[eval] {status.done}/{status.total} episodes, {status.skipped} skipped{transient}, "
              f"success {success:.1%} so far, "
              f"{status.episodes_per_min:.1f} episodes/min, ETA {format_duration(eta_s)}", flush=True)
        status.write(self.run_dir)
        self.tracker.log_scalars(status.done, {
            "eval/episodes_done": status.done, "eval/episodes_total": status.total, "eval/skipped": status.skipped,
            "eval/success_rate": status.success_rate, "eval/episodes_per_min": status.episodes_per_min,
            "eval/eta_s": status.eta_s})
