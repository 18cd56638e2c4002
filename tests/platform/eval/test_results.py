"""The episode result definition: rows, schema and report columns all come from `EpisodeResult`."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from gauntlet.platform.eval.episode import WorkItem
from gauntlet.platform.eval.results import (
    GROUP_COLUMNS,
    LABEL_COLUMNS,
    RESULT_COLUMNS,
    EpisodeResult,
    ResultsStore,
    arrow_schema,
    new_row,
    skipped_row,
)
from gauntlet.platform.eval.status import EvalStatus, StatusError, StatusLine

ITEM = WorkItem("r1", "s1", "scripted", 2, 120)
SCENE = {"task": "lift", "variant": "D0", "error_type": "drop", "category": "natural", "seed": 7,
         "label_motion": "drop", "label_grasp": "none"}


def test_a_row_has_every_column_typed_from_the_item_and_the_scene() -> None:
    row = new_row(ITEM, SCENE, "w0", "0.1.0", success=True, steps=40)
    assert list(row) == list(RESULT_COLUMNS) == arrow_schema().names
    EpisodeResult(**row)  # every field, no extra
    assert (row["run_id"], row["scene_id"], row["policy"], row["trial"], row["policy_seed"]) == ("r1", "s1",
                                                                                                 "scripted", 2, 2)
    assert row["scene_seed"] == 7 and row["label_command"] == "" and row["success"] is True
    assert math.isnan(row["latency_ms_mean"]) and row["recovery_step"] == -1
    with pytest.raises(ValueError, match="not result columns"):
        new_row(ITEM, SCENE, "w0", "0.1.0", sucess=True)


def test_report_columns_and_schema_derive_from_the_definition(tmp_path: Path) -> None:
    names = [f.name for f in dataclasses.fields(EpisodeResult)]
    assert set(LABEL_COLUMNS.values()) <= set(names) and set(GROUP_COLUMNS) <= set(names)
    assert LABEL_COLUMNS == {"motion": "label_motion", "grasp": "label_grasp", "command": "label_command"}
    store = ResultsStore(tmp_path)
    store.write([skipped_row(ITEM, SCENE, "fingerprint mismatch", "driver", "0.1.0")])
    frame = store.read()
    assert frame["skipped"].dtype == bool and frame["trial"].dtype == "int64"
    assert frame.loc[0, "skip_reason"] == "fingerprint mismatch"


def test_status_is_written_and_read_through_one_type(tmp_path: Path) -> None:
    with pytest.raises(StatusError, match="status.json"):
        EvalStatus.read(tmp_path)
    line = StatusLine(tmp_path, total=2, already=0)
    line.add(new_row(ITEM, SCENE, "w0", "0.1.0", success=True))
    line.add(skipped_row(ITEM, SCENE, "restore failed", "w0", "0.1.0"))
    line.emit(force=True, state="finished")
    status = EvalStatus.read(tmp_path)
    assert status.finished and (status.done, status.total, status.skipped, status.success_rate) == (2, 2, 1, 1.0)
    (tmp_path / "status.json").write_text("[1, 2]")
    with pytest.raises(StatusError, match="not an evaluation status"):
        EvalStatus.read(tmp_path)
