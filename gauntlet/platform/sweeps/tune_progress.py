"""What every sweep prints: `[sweep NAME]` log lines, and one line per finished Tune trial with
done/total, rate and ETA (as `gauntlet.runtime.progress` formats them), the trial and its outcome;
with `--report-to`, the same trial's config and metrics go to the sweep's tracker (Tune calls its
callbacks in the driver, so the sweep has one writer however many trials run at once)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from gauntlet.runtime.progress import format_duration
from gauntlet.runtime.tracking import NullTracker, Tracker, flatten


def sweep_log(sweep: str, message: str) -> None:
    """One unbuffered log line of a sweep (a job's log never lies about how far it got)."""
    print(f"[sweep {sweep}] {message}", flush=True)


def trial_progress(sweep: str, total: int | None, describe: Callable[[dict[str, Any]], str],
                   outcome: Callable[[dict[str, Any]], str], error: str, tracker: Tracker | None = None,
                   metrics: Sequence[str] = ()) -> Any:
    """A Tune callback printing one line per finished trial.

    `total` None: the number of trials is not known ahead (a ladder's length depends on what it
    measures), so there is no ETA. `describe(config)` names the trial, `outcome(last_result)` says
    what it measured, `error` is printed for a trial whose process died. `tracker` gets, at step =
    trials finished, the trial's numeric config as trial/config/<name>, `metrics` of its last result
    as trial/<name> and trial/ok (1 when it reported status "ok", as both sweeps' trials do).
    """
    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self, tracker: Tracker) -> None:
            self.started = time.monotonic()
            self.done = 0
            self.tracker = tracker

        def __getstate__(self) -> dict[str, Any]:
            # Tune pickles its callbacks into the experiment checkpoint; a live writer does not pickle
            # and has no business in a checkpoint.
            return {**self.__dict__, "tracker": NullTracker()}

        def _tick(self, trial: Any, what: str) -> None:
            self.done += 1
            rate_per_s = self.done / max(time.monotonic() - self.started, 1e-9)
            head = f"{self.done}/{total} trials" if total else f"trial {self.done}"
            head += f", {rate_per_s * 60:.1f}/min"
            if total:
                head += f", ETA {format_duration((total - self.done) / rate_per_s)}"
            sweep_log(sweep, f"{head} | {describe(trial.config or {})}: {what}")

        def _track(self, trial: Any, died: bool) -> None:
            result = {} if died else (trial.last_result or {})
            scalars = {f"trial/config/{k}": v for k, v in flatten(trial.config or {}).items()}
            scalars.update({f"trial/{m}": result[m] for m in metrics if m in result})
            self.tracker.log_scalars(self.done, {**scalars, "trial/ok": float(result.get("status") == "ok")})

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._tick(trial, outcome(trial.last_result or {}))
            self._track(trial, died=False)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._tick(trial, error)
            self._track(trial, died=True)

    return TrialProgress(tracker or NullTracker())
