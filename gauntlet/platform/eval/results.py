"""The results store: one typed Parquet row per `(run_id, scene_id, policy, trial)`.

Rows are written in small part files as episodes finish (each part atomically: temp + rename), so a
killed run loses at most the episodes in flight. Readers concatenate the parts and keep the first
row per key, so a key is reported exactly once even if a part was written twice around a crash;
`--resume` runs only the keys not yet present. `compact()` folds the parts into `results.parquet`.
Booleans are booleans: the schema is enforced with pyarrow on every write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

KEY = ("run_id", "scene_id", "policy", "trial")

# column -> (pyarrow type name, meaning)
RESULT_COLUMNS: dict[str, tuple[str, str]] = {
    "run_id": ("string", "evaluation run id"),
    "scene_id": ("string", "scene evaluated"),
    "policy": ("string", "policy label as given on the command line"),
    "trial": ("int64", "trial index for this scene and policy"),
    "task": ("string", "scene task"),
    "variant": ("string", "scene variant"),
    "error_type": ("string", "injected error type"),
    "category": ("string", "error source category"),
    "success": ("bool", "task solved within the horizon"),
    "skipped": ("bool", "episode not run (see skip_reason)"),
    "skip_reason": ("string", "why it was skipped; empty when it ran"),
    "steps": ("int64", "env steps taken"),
    "recovery_step": ("int64", "first step at which the task was solved; -1 if never"),
    "inference_calls": ("int64", "policy requests made"),
    "latency_ms_mean": ("float64", "mean policy request latency"),
    "latency_ms_p50": ("float64", "median policy request latency"),
    "latency_ms_max": ("float64", "slowest policy request"),
    "label_motion": ("string", "error classifier labels of the scene"),
    "label_grasp": ("string", ""),
    "label_command": ("string", ""),
    "scene_seed": ("int64", "seed of the scene's source rollout"),
    "policy_seed": ("int64", "seed given to the policy for this episode"),
    "horizon": ("int64", "step budget"),
    "wall_s": ("float64", "episode wall time"),
    "worker": ("string", "actor that ran it"),
    "code_version": ("string", "gauntlet version (+ git commit when known)"),
}


def arrow_schema() -> Any:
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    return pa.schema([(name, types[t]) for name, (t, _) in RESULT_COLUMNS.items()])


def key_of(row: dict[str, Any]) -> tuple:
    return tuple(row[k] for k in KEY)


class ResultsStore:
    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir) / "results"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._next_part = 1 + max((int(p.stem.split("-")[1]) for p in self.dir.glob("part-*.parquet")), default=0)

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
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".part-", suffix=".tmp")
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def read(self) -> Any:
        """All rows, one per key (first written wins), typed. Empty frame if nothing yet."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = sorted(self.dir.glob("part-*.parquet"))
        compacted = self.dir.parent / "results.parquet"
        tables = [pq.read_table(compacted, schema=arrow_schema())] if compacted.exists() else []
        tables += [pq.read_table(p, schema=arrow_schema()) for p in parts]
        if not tables:
            return arrow_schema().empty_table().to_pandas()
        frame = pa.concat_tables(tables).to_pandas()
        return frame.drop_duplicates(subset=list(KEY), keep="first").reset_index(drop=True)

    def done_keys(self) -> set[tuple]:
        frame = self.read()
        return set(zip(*(frame[k] for k in KEY), strict=True)) if len(frame) else set()

    def compact(self) -> Path:
        """Folds all parts into RUN/results.parquet (atomic) and removes the parts."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        frame = self.read()
        target = self.dir.parent / "results.parquet"
        table = pa.Table.from_pandas(frame, schema=arrow_schema(), preserve_index=False)
        tmp = target.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, target)
        for p in self.dir.glob("part-*.parquet"):
            p.unlink()
        return target
