"""The episode result: one typed definition (`EpisodeResult`) and its Parquet store.

`EpisodeResult`'s fields are the result columns: the Parquet schema (`arrow_schema`), the column
list (`RESULT_COLUMNS`), the row builder (`new_row`) and the report's grouping and classifier-label
columns are all derived from it, so a new column is one field here (plus, for a measured value, the
line in `episode.py` that sets it).

Rows are written in small part files as episodes finish (each part atomically and fsynced), so a
killed run loses at most the episodes in flight. Readers concatenate the parts and keep one row per
key (`read`: a row that is not a transient skip wins, else the first written), so a key is reported
exactly once even if a part was written twice around a crash, and an episode that `--resume` ran
again replaces its transient skip. `--resume` runs the keys not yet present and those whose row is a
transient skip (`skip_kind`). `compact()` folds the parts into `results.parquet`. Booleans are
booleans: the schema is enforced with pyarrow on every write.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.envs.scene_db import default_origin
from gauntlet.runtime.atomic_files import atomic_write

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from gauntlet.platform.eval.episode import WorkItem

KEY = ("run_id", "scene_id", "policy", "trial")  # the idempotency key: one row per tuple
DRIVER_WORKER = "driver"  # `worker` of the rows the driver writes itself (pre-flight skips, dead actors)
TRANSIENT, PERMANENT = "transient", "permanent"  # skip_kind values ("" for an episode that ran)
# Causes (`skip_cause`) of skips that the same scene, policy and code would repeat: `--resume` keeps
# them. Every other cause (an unreachable policy, a timeout, a dead actor, an error nobody foresaw)
# is transient and `--resume` runs the episode again: a wrong "transient" costs one more attempt, a
# wrong "permanent" would lose the episode for good.
PERMANENT_CAUSES = frozenset({
    "restore failed",  # the scene cannot be put into this code's env (Episode.start)
    "PolicyMismatchError",  # the scene's task gives the policy vectors of another size (check_fits)
    "RemoteAnswerError",  # the remote policy's answer is not a chunk of this env's actions
    "RemoteContractError",  # the remote policy's declared contract does not fit this env
    # Pre-flight (scene_check, --policy-tasks): rows the driver writes are marked PERMANENT as it
    # writes them; these classify the same causes in rows without skip_kind.
    "fingerprint mismatch", "array file missing", "policy_tasks",
})
ACTOR_DIED = "actor_died"  # the cause of an episode whose rollout actor died every time it ran it
ACTOR_RAISED = "actor_raised"  # the cause of an episode whose rollout actor's `run` raised (it lives on)
RESULTS_DIR = "results"  # RUN/results/part-*.parquet, written as episodes finish
COMPACTED_FILE = "results.parquet"  # RUN/results.parquet, the parts folded together at the end


def _column(meaning: str, default: Any = dataclasses.MISSING, *, scene: str = "", role: str = "") -> Any:
    """A result column. `scene`: copied from this scene metadata key (else `default`); `role`:
    "group" (a report grouping column, never null) or "label" (an error classifier's label)."""
    return field(default=default, metadata={"meaning": meaning, "scene": scene, "role": role})


@dataclass(frozen=True, kw_only=True)
class EpisodeResult:
    """One episode's result row. Field order is the Parquet column order."""

    run_id: str = _column("evaluation run id")
    scene_id: str = _column("scene evaluated", role="group")
    policy: str = _column("policy label as given on the command line", role="group")
    trial: int = _column("trial index for this scene and policy")
    task: str = _column("scene task", "", scene="task", role="group")
    variant: str = _column("scene variant", "", scene="variant", role="group")
    error_type: str = _column("injected error type", "", scene="error_type", role="group")
    category: str = _column("error source category", "", scene="category", role="group")
    origin: str = _column("where the scene's state came from: injected, nominal or harvested (scene_db.ORIGINS). "
                          "Rows without origin: derived from error_type on reading (nominal for the nominal "
                          "error type, else injected)", "", scene="origin", role="group")
    success: bool = _column("task solved within the horizon", False)
    skipped: bool = _column("episode not run (see skip_reason)", False)
    skip_reason: str = _column("why it was skipped; empty when it ran", "")
    skip_kind: str = _column("transient (--resume runs it again: policy unreachable, timeout, actor died, any "
                             "unforeseen error) or permanent (the same scene, policy and code would skip it "
                             "again: environment or policy/task mismatch, restore failed); empty when it ran. "
                             "Rows without skip_kind: derived from skip_reason on reading", "")
    steps: int = _column("env steps taken", 0)
    recovery_step: int = _column("first step at which the task was solved; -1 if never", -1)
    inference_calls: int = _column("policy requests made", 0)
    episode_restarts: int = _column("times the episode was started again from its scene's start because the "
                                    "replica holding the policy's memory of it was lost (restarted or "
                                    "replaced); the row's outcome is the run that was not interrupted", 0)
    replan_steps: int = _column("actions executed from each returned chunk before asking again (--replan-steps K, "
                                "or the chunk length when the whole chunk is executed); 0 if none came", 0)
    first_action: str = _column("the first action the policy sent, as a JSON list of floats (the same checkpoint on "
                                "the same scene gives the same first action in any evaluator that maps "
                                "observations the same way); empty if none came", "")
    latency_ms_mean: float = _column("mean policy request latency", float("nan"))
    latency_ms_p50: float = _column("median policy request latency", float("nan"))
    latency_ms_max: float = _column("slowest policy request", float("nan"))
    label_motion: str = _column("motion classifier's label of the scene", "", scene="label_motion", role="label")
    label_grasp: str = _column("grasp classifier's label of the scene", "", scene="label_grasp", role="label")
    label_command: str = _column("command classifier's label of the scene", "", scene="label_command",
                                 role="label")
    scene_seed: int = _column("seed of the scene's source rollout", -1, scene="seed")
    policy_seed: int = _column("seed given to the policy for this episode")
    horizon: int = _column("step budget")
    wall_s: float = _column("episode wall time", 0.0)
    worker: str = _column("actor that ran it")
    code_version: str = _column("gauntlet version (+ git commit when known)")


_FIELDS = dataclasses.fields(EpisodeResult)
_ARROW_TYPES = {"str": "string", "int": "int64", "float": "float64", "bool": "bool"}  # annotation -> pyarrow
_PY_TYPES = {"str": str, "int": int, "float": float, "bool": bool}
# column -> (pyarrow type name, meaning)
RESULT_COLUMNS: dict[str, tuple[str, str]] = {f.name: (_ARROW_TYPES[f.type], f.metadata["meaning"]) for f in _FIELDS}
# columns the report groups by; a missing value there would make pandas drop rows silently
GROUP_COLUMNS: tuple[str, ...] = tuple(f.name for f in _FIELDS if f.metadata["role"] == "group")
# error classifier name -> the column holding its label of the scene
LABEL_COLUMNS: dict[str, str] = {f.name.removeprefix("label_"): f.name for f in _FIELDS
                                 if f.metadata["role"] == "label"}


def arrow_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(name, pa.type_for_alias(t)) for name, (t, _) in RESULT_COLUMNS.items()])


def new_row(item: WorkItem, scene: dict[str, Any], worker: str, code_version: str, **outcome: Any) -> dict[str, Any]:
    """A result row: the item's key, the scene's labels, defaults for the outcome, then `outcome`.

    Rows are plain dicts (they cross Ray and go straight into pyarrow); `EpisodeResult(**row)` types one.
    """
    given = {"run_id": item.run_id, "scene_id": item.scene_id, "policy": item.policy, "trial": int(item.trial),
             "policy_seed": int(item.trial), "horizon": int(item.horizon), "worker": worker,
             "code_version": code_version}
    row: dict[str, Any] = {}
    for f in _FIELDS:  # in column order
        if f.name in given:
            row[f.name] = given[f.name]
        elif f.metadata["scene"]:
            row[f.name] = _PY_TYPES[f.type](scene.get(f.metadata["scene"], f.default))
        elif f.default is not dataclasses.MISSING:
            row[f.name] = f.default
        else:
            raise TypeError(f"result column {f.name!r} has no default: give it in new_row")
    unknown = set(outcome) - set(row)
    if unknown:
        raise ValueError(f"not result columns: {sorted(unknown)}")
    row.update(outcome)
    return row


def skip_cause(reason: str) -> str:
    """A skip reason's cause: the text before its first colon (an exception name, "restore failed",
    an incompatibility), so that a summary counts causes rather than every distinct message."""
    return reason.split(":", 1)[0].strip() or "unknown"


def skip_kind_of(reason: str) -> str:
    """TRANSIENT or PERMANENT: the one classification of a skip reason (see PERMANENT_CAUSES)."""
    return PERMANENT if skip_cause(reason) in PERMANENT_CAUSES else TRANSIENT


def skipped_row(item: WorkItem, scene: dict[str, Any], reason: str, worker: str, code_version: str,
                kind: str = "") -> dict[str, Any]:
    """The row of an episode that never ran (incompatible scene, failed restore, policy unavailable).
    `kind`: TRANSIENT or PERMANENT when the caller knows (pre-flight skips are permanent by
    construction), else classified from `reason` (`skip_kind_of`)."""
    if kind not in ("", TRANSIENT, PERMANENT):
        raise ValueError(f"skip kind must be {TRANSIENT!r} or {PERMANENT!r}, got {kind!r}")
    return new_row(item, scene, worker, code_version, skipped=True, skip_reason=reason,
                   skip_kind=kind or skip_kind_of(reason))


def key_of(row: dict[str, Any]) -> tuple:
    return tuple(row[k] for k in KEY)


class ResultsStore:
    """RUN/results/part-*.parquet as episodes finish, folded into RUN/results.parquet by `compact()`."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir) / RESULTS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self._next_part = 1 + max((int(p.stem.split("-")[1]) for p in self.dir.glob("part-*.parquet")), default=0)

    @property
    def compacted(self) -> Path:
        return self.dir.parent / COMPACTED_FILE

    def write(self, rows: list[dict[str, Any]]) -> Path | None:
        """Appends rows as one new part file (atomic). Column types are enforced here."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return None
        for row in rows:
            missing = [c for c in RESULT_COLUMNS if c not in row]
            if missing:
                raise ValueError(f"result row {key_of(row) if all(k in row for k in KEY) else row} lacks {missing}")
        table = pa.Table.from_pylist([{c: r[c] for c in RESULT_COLUMNS} for r in rows], schema=arrow_schema())
        path = self.dir / f"part-{self._next_part:06d}.parquet"
        self._next_part += 1
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        return path

    def parts(self) -> list[Path]:
        """The part files, in the order they were written."""
        return sorted(self.dir.glob("part-*.parquet"))

    def files(self) -> list[Path]:
        """The results files a reader would read: the compacted file first, then the parts."""
        return ([self.compacted] if self.compacted.exists() else []) + self.parts()

    def read(self) -> pd.DataFrame:
        """All rows, one per key (`one_row_per_key`), typed. Empty frame if nothing yet."""
        return self._read(self.files())

    @staticmethod
    def _read(files: list[Path]) -> pd.DataFrame:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(p, schema=arrow_schema()) for p in files]
        if not tables:
            return arrow_schema().empty_table().to_pandas()
        return one_row_per_key(pa.concat_tables(tables).to_pandas())

    def done_keys(self) -> set[tuple]:
        """The keys `--resume` does not run again: every key with a row, except transient skips."""
        frame = self.read()
        frame = frame[~transient_skips(frame)]
        return set(zip(*(frame[k] for k in KEY), strict=True)) if len(frame) else set()

    def compact(self) -> Path:
        """Folds the parts into RUN/results.parquet (atomic) and removes exactly the parts it read:
        a part written meanwhile (by a writer the run lock does not cover, or a future one) stays."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = self.parts()  # listed once: these, and only these, are read and then removed
        frame = self._read(([self.compacted] if self.compacted.exists() else []) + parts)
        table = pa.Table.from_pandas(frame, schema=arrow_schema(), preserve_index=False)
        atomic_write(self.compacted, lambda tmp: pq.write_table(table, tmp))
        for p in parts:
            p.unlink(missing_ok=True)
        return self.compacted


def transient_skips(frame: pd.DataFrame) -> pd.Series:
    """Rows of `frame` (read through the store, skip_kind filled) that are transient skips."""
    return frame["skipped"].fillna(False).astype(bool) & (frame["skip_kind"] == TRANSIENT)


def one_row_per_key(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per KEY, in written order. A transient skip loses to any other row of its key (the
    episode ran, or was skipped for good, on a later attempt); otherwise the first written wins, so
    a part written twice around a crash counts once. Rows without `skip_kind` (null, or empty on a
    skipped row) get it from their skip_reason, the one classification; rows without `origin` get
    the origin their error type implies (`scene_db.default_origin`)."""
    origin = frame["origin"].fillna("").astype(str)
    frame["origin"] = origin.mask(origin == "", frame["error_type"].fillna("").astype(str).map(default_origin))
    skipped = frame["skipped"].fillna(False).astype(bool)
    kind = frame["skip_kind"].fillna("").astype(str)
    unknown = skipped & (kind == "")
    kind[unknown] = frame.loc[unknown, "skip_reason"].fillna("").astype(str).map(skip_kind_of)
    frame["skip_kind"] = kind.where(skipped, "")
    # A stable sort on the rank keeps the written order within each rank; sort_index restores it.
    rank = transient_skips(frame).astype(int).sort_values(kind="stable")
    kept = frame.loc[rank.index].drop_duplicates(subset=list(KEY), keep="first")
    return kept.sort_index().reset_index(drop=True)
