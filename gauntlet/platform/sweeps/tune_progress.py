"""What every sweep prints: `[sweep NAME]` log lines, and one line per finished Tune trial with
done/total, rate and ETA (as `gauntlet.runtime.progress` formats them), the trial and its outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gauntlet.runtime.progress import format_duration


def sweep_log(sweep: str, message: str) -> None:
    """One unbuffered log line of a sweep (a job's log never lies about how far it got)."""
    print(f"[sweep {sweep}] {message}", flush=True)


def trial_progress(sweep: str, total: int | None, describe: Callable[[dict[str, Any]], str],
                   outcome: Callable[[dict[str, Any]], str], error: str) -> Any:
    """A Tune callback printing one line per finished trial.

    `total` None: the number of trials is not known ahead (a ladder's length depends on what it
    measures), so there is no ETA. `describe(config)` names the trial, `outcome(last_result)` says
    what it measured, `error` is printed for a trial whose process died.
    """
    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.done = 0

        def _tick(self, trial: Any, what: str) -> None:
            self.done += 1
            rate_per_s = self.done / max(time.monotonic() - self.started, 1e-9)
            head = f"{self.done}/{total} trials" if total else f"trial {self.done}"
            head += f", {rate_per_s * 60:.1f}/min"
            if total:
                head += f", ETA {format_duration((total - self.done) / rate_per_s)}"
            sweep_log(sweep, f"{head} | {describe(trial.config or {})}: {what}")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._tick(trial, outcome(trial.last_result or {}))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._tick(trial, error)

    return TrialProgress()
