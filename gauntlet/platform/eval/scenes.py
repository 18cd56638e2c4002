"""Which scenes a run evaluates: the database opened, the filters applied, pre-flight compatibility."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gauntlet.platform.eval.config import SCENE_FILTERS, EvalConfig, EvalConfigError

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.envs.scene_db import SceneDB


def run_scenes(cfg: EvalConfig) -> tuple[SceneDB, pd.DataFrame]:
    """(the database, the filtered metadata frame with compatibility columns): `scene_check.select_scenes`
    with eval's filter flags. Raises EvalConfigError early."""
    from gauntlet.envs.env_errors import GauntletEnvError
    from gauntlet.envs.scene_check import select_scenes
    from gauntlet.envs.scene_db import SceneDB

    filters = {f"--{name.replace('_', '-')}": (column, getattr(cfg, name)) for name, column in SCENE_FILTERS.items()}
    try:
        db = SceneDB.open(cfg.scenes)
        return db, select_scenes(db, filters, cfg.limit)
    except GauntletEnvError as exc:
        raise EvalConfigError(str(exc)) from None


def scene_records(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """scene_id -> its metadata as plain Python values (what ships to the rollout actors)."""
    return {r["scene_id"]: {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in frame.to_dict("records")}
