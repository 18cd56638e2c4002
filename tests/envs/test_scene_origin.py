"""A scene's origin: generated scenes record it, `scenes check --json` counts it, and a database written
without the column reads as injected / nominal by error type."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from gauntlet.envs.injectors import NOMINAL
from gauntlet.envs.scene_db import HARVESTED, INJECTED, NOMINAL_ORIGIN, SceneDB, SceneRecord
from gauntlet.platform.cli import main as cli


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("origin") / "db"
    assert cli(["scenes", "generate", "--out", str(out), "--tasks", "lift", "--variants", "D0", "--nominal",
                "--error-types", "drop,object_push", "--workers", "2", "--no-validate"]) == 0
    return out


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert cli(["scenes", "check", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generated_scenes_record_their_origin_and_check_counts_it(db_path: Path, capsys) -> None:
    meta = SceneDB.open(db_path).metadata()
    assert dict(zip(meta["error_type"], meta["origin"], strict=True)) == {
        NOMINAL: NOMINAL_ORIGIN, "drop": INJECTED, "object_push": INJECTED}
    assert "origin" in pd.read_parquet(db_path / "scenes.parquet").columns  # written, not only derived
    by_origin = _check(db_path, capsys)["by_origin"]
    assert {k: v["total"] for k, v in by_origin.items()} == {INJECTED: 2, NOMINAL_ORIGIN: 1}


def test_a_database_without_origin_reads_as_injected_or_nominal(db_path: Path, tmp_path: Path, capsys) -> None:
    old = tmp_path / "old"
    shutil.copytree(db_path, old)
    table = pd.read_parquet(old / "scenes.parquet").drop(columns=["origin"])
    table.to_parquet(old / "scenes.parquet")
    db = SceneDB.open(old)
    meta = db.metadata()
    assert (meta["origin"] == meta["error_type"].map({NOMINAL: NOMINAL_ORIGIN, "drop": INJECTED, "object_push": INJECTED})).all()
    assert _check(old, capsys)["by_origin"] == _check(db_path, capsys)["by_origin"]
    # Adding to an old database writes the column for every row, old ones included.
    new = db.row(meta["scene_id"].iloc[0]) | {"scene_id": "harvested-0", "origin": HARVESTED}
    db.add([SceneRecord(row=new, arrays=db.load_arrays(meta["scene_id"].iloc[0]))])
    written = pd.read_parquet(old / "scenes.parquet").set_index("scene_id")["origin"]
    assert written["harvested-0"] == HARVESTED and set(written) == {INJECTED, NOMINAL_ORIGIN, HARVESTED}


def test_an_unknown_origin_is_refused_naming_the_field(db_path: Path, tmp_path: Path) -> None:
    db = SceneDB.open(db_path)
    scene_id = db.metadata()["scene_id"].iloc[0]
    copy = SceneDB.create(tmp_path / "copy")
    bad = db.row(scene_id) | {"origin": "found-on-the-floor"}
    with pytest.raises(ValueError, match="origin 'found-on-the-floor' is not one of"):
        copy.add([SceneRecord(row=bad, arrays=db.load_arrays(scene_id))])
    assert len(copy) == 0
