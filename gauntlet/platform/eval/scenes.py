"""Which scenes a run evaluates: the database opened, the filters applied, pre-flight compatibility."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.platform.eval.config import SCENE_FILTERS, EvalConfig, EvalConfigError

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.envs.scene_db import SceneDB


def select_scenes(cfg: EvalConfig) -> tuple[SceneDB, pd.DataFrame]:
    """(the database, the filtered metadata frame with compatibility columns). Raises EvalConfigError early."""
    from gauntlet.envs.env_errors import GauntletEnvError
    from gauntlet.envs.scene_check import compatibility
    from gauntlet.envs.scene_db import SceneDB

    try:
        db = SceneDB.open(cfg.scenes)
        frame = db.metadata()
    except GauntletEnvError as exc:
        raise EvalConfigError(str(exc)) from None
    if frame.empty:
        raise EvalConfigError(f"{cfg.scenes}: the scene database is empty")
    for name, column in SCENE_FILTERS.items():
        values = set(getattr(cfg, name))
        if values:
            if not values & set(frame[column]):
                raise EvalConfigError(f"--{name.replace('_', '-')} {sorted(values)} select no scenes "
                                      f"(database has {sorted(set(frame[column]))})")
            frame = frame[frame[column].isin(values)]
    if frame.empty:
        raise EvalConfigError("the filters select no scenes")
    frame = frame.sort_values("scene_id")
    if cfg.limit:
        frame = frame.head(cfg.limit)
    return db, compatibility(SubsetDB(db, frame))


class SubsetDB:
    """A SceneDB view restricted to some rows (so pre-flight only builds the envs it needs)."""

    def __init__(self, db: SceneDB, frame: pd.DataFrame):
        self._db = db
        self._frame = frame.reset_index(drop=True)
        self.root = db.root

    def metadata(self) -> pd.DataFrame:
        return self._frame

    def arrays_path(self, scene_id: str) -> Path:
        return self._db.arrays_path(scene_id)


def scene_records(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """scene_id -> its metadata as plain Python values (what ships to the rollout actors)."""
    return {r["scene_id"]: {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in frame.to_dict("records")}
