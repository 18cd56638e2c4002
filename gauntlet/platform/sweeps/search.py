"""What a throughput sweep tries next: knob lists from the command line, a grid, or a ladder.

Both plans are plain objects with `propose() -> Proposal | None` and `record(proposal, metric)`, so
their logic is tested without Ray; `tune_searcher(plan)` adapts either to a Ray Tune `Searcher`,
which runs the proposals one trial at a time (throughput measured beside another trial is noise).

Grid: every combination of the knob values, in the order given (first knob slowest).

Ladder: start from a baseline (the first value of each knob unless given); in each round try every
knob, in the order given, moved to its next candidate value with all other knobs as they are now;
keep a move only if its metric beats the current best by more than the noise margin (a move that
failed, hit the RAM floor or errored is never kept); repeat rounds until one keeps nothing or no
knob has a next value. Knobs only move forward through their lists; a move already measured from the
same configuration in an earlier round is not measured again. Given the same measurements the ladder
takes the same path.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


class KnobError(ValueError):
    """A knob list or baseline on the command line is unusable; the message names the flag."""


@dataclass(frozen=True)
class KnobSpec:
    """One tunable setting of a sweep target."""

    name: str  # the setting's name (as in the target's config)
    type: type  # int or float
    minimum: float  # smallest sensible value
    help: str = ""  # what it controls


Knobs = dict[str, tuple[Any, ...]]  # knob -> candidate values, in the order they are tried


def _parse_value(spec: KnobSpec, text: str, flag: str) -> Any:
    try:
        value = spec.type(text) if spec.type is not int else int(text, 10)
    except ValueError:
        raise KnobError(f"{flag}: {spec.name}={text!r} is not {'an integer' if spec.type is int else 'a number'}") from None
    if value < spec.minimum:
        raise KnobError(f"{flag}: {spec.name}={value} is below its minimum {spec.minimum:g}")
    return value


def parse_knobs(items: Iterable[str], specs: Mapping[str, KnobSpec], flag: str = "--knobs") -> Knobs:
    """`["num_workers=1,2,4", "prefetch_depth=2,4"]` -> {"num_workers": (1, 2, 4), ...} (typed, checked)."""
    knobs: Knobs = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise KnobError(f"{flag}: expected NAME=V1,V2,... got {item!r}")
        if name not in specs:
            raise KnobError(f"{flag}: unknown knob {name!r}; this target has {', '.join(specs)}")
        if name in knobs:
            raise KnobError(f"{flag}: knob {name!r} is given twice")
        texts = [v.strip() for v in values.split(",") if v.strip()]
        if not texts:
            raise KnobError(f"{flag}: knob {name!r} has an empty value list")
        parsed = tuple(_parse_value(specs[name], t, flag) for t in texts)
        if len(set(parsed)) != len(parsed):
            raise KnobError(f"{flag}: knob {name!r} lists a value twice: {texts}")
        knobs[name] = parsed
    return knobs


def parse_baseline(items: Iterable[str], knobs: Knobs, specs: Mapping[str, KnobSpec],
                   flag: str = "--baseline") -> dict[str, Any]:
    """The ladder's starting point: the first value of each knob, overridden by `NAME=V` items."""
    baseline = {name: values[0] for name, values in knobs.items()}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in knobs:
            raise KnobError(f"{flag}: expected NAME=V for a swept knob ({', '.join(knobs)}), got {item!r}")
        value = _parse_value(specs[name], text.strip(), flag)
        if value not in knobs[name]:
            raise KnobError(f"{flag}: {name}={value} is not among its candidates {list(knobs[name])}")
        baseline[name] = value
    return baseline


@dataclass(frozen=True)
class Proposal:
    """One configuration to measure."""

    index: int  # position in the sweep, from 0
    knobs: dict[str, Any]  # the full configuration
    round: int = 0  # ladder round (0: the baseline; grid: always 0)
    changed_knob: str = ""  # ladder: the knob this step moved ("" for the baseline and for grid points)


@dataclass
class Step:
    """A measured proposal and what the plan made of it."""

    proposal: Proposal
    metric: float | None  # None: the trial did not produce a valid measurement
    accepted: bool  # grid: measured ok; ladder: kept as the new current configuration


def _key(knobs: Mapping[str, Any]) -> tuple:
    return tuple(sorted(knobs.items()))


class GridPlan:
    """Every combination, first knob slowest."""

    def __init__(self, knobs: Knobs):
        if not knobs:
            raise KnobError("--knobs: name at least one knob")
        self.knobs = knobs
        self._points = [dict(zip(knobs, combo, strict=True)) for combo in itertools.product(*knobs.values())]
        self.history: list[Step] = []
        self._next = 0

    @property
    def total(self) -> int | None:
        return len(self._points)

    @property
    def max_trials(self) -> int:
        return len(self._points)

    def propose(self) -> Proposal | None:
        if self._next >= len(self._points):
            return None
        proposal = Proposal(index=self._next, knobs=dict(self._points[self._next]))
        self._next += 1
        return proposal

    def record(self, proposal: Proposal, metric: float | None) -> bool:
        self.history.append(Step(proposal, metric, metric is not None))
        return metric is not None

    def best(self) -> Step | None:
        """The fastest measured configuration."""
        ok = [s for s in self.history if s.metric is not None]
        return max(ok, key=lambda s: (s.metric, -s.proposal.index)) if ok else None


class LadderPlan:
    """One knob at a time to its next value; keep only improvements beyond the noise margin."""

    def __init__(self, knobs: Knobs, baseline: Mapping[str, Any] | None = None, margin: float = 0.03):
        if not knobs:
            raise KnobError("--knobs: name at least one knob")
        if margin < 0:
            raise KnobError(f"--noise-margin must be >= 0, got {margin}")
        self.knobs = knobs
        self.order = list(knobs)
        self.margin = margin
        self.current: dict[str, Any] = {k: v[0] for k, v in knobs.items()} | dict(baseline or {})
        self.best_metric: float | None = None
        self.history: list[Step] = []
        self._round = 1  # round 0 is the baseline alone
        self._pos = 0  # next knob (index into order) to try in this round
        self._kept_this_round = False
        self._outstanding: Proposal | None = None
        self._started = False
        self._tried: set[tuple] = set()

    @property
    def total(self) -> int | None:
        return None  # depends on the measurements

    @property
    def max_trials(self) -> int:
        """An upper bound: every round but the last keeps a move, each move uses up one candidate."""
        moves = sum(len(v) - 1 for v in self.knobs.values())
        return 1 + (moves + 1) * len(self.knobs)

    def _next_value(self, knob: str) -> Any | None:
        values = self.knobs[knob]
        i = values.index(self.current[knob])
        return values[i + 1] if i + 1 < len(values) else None

    def propose(self) -> Proposal | None:
        if self._outstanding is not None:
            raise RuntimeError("LadderPlan.propose: the previous proposal has no result yet")
        index = len(self.history)
        if not self._started:
            self._started = True
            self._outstanding = Proposal(index=index, knobs=dict(self.current))
            return self._outstanding
        while True:
            while self._pos < len(self.order):
                knob = self.order[self._pos]
                self._pos += 1
                value = self._next_value(knob)
                if value is None:
                    continue
                knobs = self.current | {knob: value}
                if _key(knobs) in self._tried:
                    # Measured in an earlier round from this same current configuration (nothing has
                    # been kept since), so it would not be kept now either.
                    continue
                self._outstanding = Proposal(index=index, knobs=knobs, round=self._round, changed_knob=knob)
                return self._outstanding
            if not self._kept_this_round:
                return None  # a whole round without an improvement (or nothing left to move)
            self._round += 1
            self._pos = 0
            self._kept_this_round = False

    def _improves(self, metric: float | None) -> bool:
        if metric is None:
            return False
        if self.best_metric is None:
            return True  # the baseline failed: any valid measurement is better
        return metric > self.best_metric * (1.0 + self.margin)

    def record(self, proposal: Proposal, metric: float | None) -> bool:
        if proposal != self._outstanding:
            raise RuntimeError(f"LadderPlan.record: expected the result of proposal {self._outstanding}")
        self._outstanding = None
        self._tried.add(_key(proposal.knobs))
        if proposal.changed_knob == "":  # the baseline is the starting point whatever it measured
            self.best_metric = metric
            self.history.append(Step(proposal, metric, True))
            return True
        accepted = self._improves(metric)
        if accepted:
            self.current = dict(proposal.knobs)
            self.best_metric = metric
            self._kept_this_round = True
        self.history.append(Step(proposal, metric, accepted))
        return accepted

    def path(self) -> list[tuple[str, Any, bool]]:
        """(knob moved, value tried, kept) per step after the baseline: the ladder's route."""
        return [(s.proposal.changed_knob, s.proposal.knobs[s.proposal.changed_knob], s.accepted)
                for s in self.history if s.proposal.changed_knob]

    def best(self) -> Step | None:
        """The configuration the ladder ended on (None if nothing measured ok)."""
        kept = [s for s in self.history if s.accepted and s.metric is not None]
        return kept[-1] if kept else None


def tune_searcher(plan: GridPlan | LadderPlan, metric: str) -> Any:
    """A Ray Tune Searcher running `plan`: one proposal in flight at a time, results fed back.

    Trials report `status` and `metric`; only `status == "ok"` counts as a measurement. The trial's
    config is `{"knobs": {...}, "step": {...}}`.
    """
    from ray.tune.search import Searcher

    class PlanSearcher(Searcher):
        def __init__(self) -> None:
            super().__init__(metric=metric, mode="max")
            self.plan = plan
            self.trials: dict[str, Proposal] = {}
            self._waiting = False

        def suggest(self, trial_id: str) -> dict | str | None:
            if self._waiting:
                return None  # one at a time: the next step may depend on this result
            proposal = self.plan.propose()
            if proposal is None:
                return Searcher.FINISHED
            self.trials[trial_id] = proposal
            self._waiting = True
            return {"knobs": dict(proposal.knobs), "step": {"index": proposal.index, "round": proposal.round,
                                                           "changed_knob": proposal.changed_knob}}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            proposal = self.trials.get(trial_id)
            if proposal is None:
                return
            value = None
            if not error and result and result.get("status") == "ok":
                raw = result.get(metric)
                value = float(raw) if raw is not None else None
            self.plan.record(proposal, value)
            self._waiting = False

        def save(self, checkpoint_path: str) -> None:
            # Tune checkpoints searchers; the plan's history is plain data, kept as JSON (no pickle).
            steps = [{**asdict(s.proposal), "metric": s.metric, "accepted": s.accepted} for s in self.plan.history]
            with open(checkpoint_path, "w") as fh:
                json.dump({"history": steps}, fh, default=str)

        def restore(self, checkpoint_path: str) -> None:
            raise NotImplementedError("a throughput sweep is re-run, not resumed")

    return PlanSearcher()


@dataclass(frozen=True)
class PlanSummary:
    """What the report says about a finished plan."""

    mode: str  # grid or ladder
    recommended: dict[str, Any] | None  # the configuration to use (None: nothing measured ok)
    metric: float | None  # its measurement
    path: list[dict[str, Any]] = field(default_factory=list)  # ladder steps (empty for grid)


def summarise_plan(plan: GridPlan | LadderPlan) -> PlanSummary:
    best = plan.best()
    path = []
    if isinstance(plan, LadderPlan):
        for s in plan.history:
            path.append({"index": s.proposal.index, "round": s.proposal.round, "knob": s.proposal.changed_knob,
                         "value": s.proposal.knobs.get(s.proposal.changed_knob) if s.proposal.changed_knob else None,
                         "metric": s.metric, "kept": s.accepted})
    return PlanSummary(mode="ladder" if isinstance(plan, LadderPlan) else "grid",
                       recommended=dict(best.proposal.knobs) if best else None,
                       metric=best.metric if best else None, path=path)


def knob_table(knobs: Knobs) -> Sequence[str]:
    return [f"{k}={','.join(str(v) for v in values)}" for k, values in knobs.items()]
