"""Reading an evaluation run for a report: its result rows (typed, nulls made explicit) and run.json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.platform.eval.results import (
    COMPACTED_FILE,
    GROUP_COLUMNS,
    RESULTS_DIR,
    ResultsStore,
    arrow_schema,
)
from gauntlet.platform.eval.status import RUN_MANIFEST
from gauntlet.runtime.manifests import ManifestError, read_json

if TYPE_CHECKING:
    import pandas as pd


class ReportInputError(ValueError):
    """The run directory cannot be reported on: missing, empty, or its results unreadable."""


class ReportWriteError(RuntimeError):
    """A report's files cannot be written where they were asked for (the message names the directory)."""


def _unreadable_file(paths: list[Path]) -> Path | None:
    """The first results file that does not read with the store's schema (to name it in the error)."""
    import pyarrow.parquet as pq

    for path in paths:
        try:
            pq.read_table(path, schema=arrow_schema())
        except Exception:  # noqa: BLE001 - any failure means "this is the bad file"
            return path
    return None


def load_results(run_dir: Path | str) -> pd.DataFrame:
    """The run's result rows, typed, with missing grouping values made explicit.

    Raises ReportInputError naming the path when RUN is missing, holds no results, or a results
    file cannot be read. Checks come before `ResultsStore(...)`, which would create RUN/results.
    """
    import pyarrow as pa

    run = Path(run_dir)
    if not run.exists():
        raise ReportInputError(f"run directory {run} does not exist")
    if not run.is_dir():
        raise ReportInputError(f"run directory {run} is not a directory")
    parts = sorted((run / RESULTS_DIR).glob("part-*.parquet")) if (run / RESULTS_DIR).is_dir() else []
    compacted = run / COMPACTED_FILE
    files = ([compacted] if compacted.exists() else []) + parts
    if not files:
        raise ReportInputError(
            f"no results in {run}: expected {run / RESULTS_DIR}/part-*.parquet or {compacted} "
            f"(did `gauntlet eval --out {run}` finish any episode?)"
        )
    try:
        frame = ResultsStore(run).read()
    except (OSError, ValueError, pa.ArrowException) as exc:
        bad = _unreadable_file(files)
        where = f"results file {bad}" if bad else f"results under {run}"
        raise ReportInputError(f"cannot read {where}: {exc}") from exc
    if frame.empty:
        raise ReportInputError(f"no result rows in {run} (results files hold no episodes)")
    # A null flag is treated as False: an episode recorded without `skipped` ran, and one without
    # `success` did not succeed. The store writes booleans, so this only guards hand-made files.
    for column in ("success", "skipped"):
        frame[column] = frame[column].fillna(False).astype(bool)
    for column in GROUP_COLUMNS:
        frame[column] = frame[column].fillna("unknown").astype(str)
    return frame


def run_fields(run_config: dict[str, Any]) -> dict[str, Any]:
    """run.json flattened for display and lookups (run_id, policy, scenes, trials, horizon, ...).

    `gauntlet eval` writes {"identity": {...}, "config": {...}, "config_hash": ...}; a flat object is
    accepted too. Identity wins over config over top level, since identity is what a resume checks.
    """
    fields: dict[str, Any] = {}
    for source in (run_config, run_config.get("config"), run_config.get("identity")):
        if isinstance(source, dict):
            fields.update({k: v for k, v in source.items() if not isinstance(v, dict)})
    return fields


def load_run_config(run_dir: Path | str) -> tuple[dict[str, Any], str | None]:
    """(run.json as a dict, a note if it was missing or unreadable). The report works without it."""
    path = Path(run_dir) / RUN_MANIFEST
    if not path.exists():
        return {}, f"{path} not found: run configuration not shown"
    try:
        data = read_json(path, "run manifest")
    except ManifestError as exc:
        return {}, f"{exc}: run configuration not shown"
    if not isinstance(data, dict):
        return {}, f"{path} does not hold a JSON object: run configuration not shown"
    return data, None
