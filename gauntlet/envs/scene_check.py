"""Pre-flight: which scenes of a database can the current code replay?

Fingerprints are computed once per distinct env configuration (a handful per database), not once
per scene, so checking thousands of scenes takes seconds. A scene is compatible when its
fingerprint matches the current env's and its array file is present.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.envs.env import EnvConfig, GauntletEnv
from gauntlet.envs.env_errors import GauntletEnvError
from gauntlet.envs.scene_db import SceneDB, SceneDBError

if TYPE_CHECKING:
    import pandas as pd

# The list fields that select scenes (`gauntlet eval --tasks ...`, `gymnasium.make("gauntlet/Scenes-v0",
# tasks=...)`) -> the scene metadata column each one filters.
SCENE_FILTERS: dict[str, str] = {"tasks": "task", "variants": "variant", "error_types": "error_type",
                                 "categories": "category"}


def current_fingerprints(env_configs: list[str]) -> dict[str, str]:
    """{env_config JSON: fingerprint of that env under the current code, or 'error: ...'}."""
    out: dict[str, str] = {}
    for cfg_json in env_configs:
        try:
            env = GauntletEnv(EnvConfig.from_json(cfg_json))
            out[cfg_json] = env.fingerprint
            env.close()
        except (GauntletEnvError, TypeError, ValueError) as exc:  # (JSONDecodeError is a ValueError)
            # An env the current code cannot build: every scene that needs it is incompatible.
            out[cfg_json] = f"error: {exc}"
    return out


def compatibility(db: SceneDB | SubsetDB) -> Any:
    """The metadata frame with `compatible` (bool) and `incompatible_reason` (str) columns added."""
    frame = db.metadata().copy()
    fps = current_fingerprints(sorted(frame["env_config"].unique()))
    current = frame["env_config"].map(fps)
    array_problems = frame["scene_id"].map(lambda sid: _array_file_problem(db, sid))
    match = current == frame["fingerprint"]
    frame["compatible"] = (match & (array_problems == "")).astype(bool)
    reason = []
    for ok, fp_now, fp_then, problem in zip(match, current, frame["fingerprint"], array_problems, strict=True):
        if problem:
            reason.append(problem)
        elif ok:
            reason.append("")
        elif str(fp_now).startswith("error:"):
            reason.append(str(fp_now))
        else:
            reason.append(f"fingerprint mismatch: scene {fp_then[:12]} vs env {fp_now[:12]}")
    frame["incompatible_reason"] = reason
    return frame


class SceneSelectionError(GauntletEnvError):
    """A filter selects no scene of the database; the message names the flag and what the database holds."""


def select_scenes(db: SceneDB, filters: Mapping[str, tuple[str, Iterable[str]]], limit: int = 0) -> pd.DataFrame:
    """The scenes a command works on: those whose column holds one of the wanted values, for each
    `flag -> (column, wanted)` of `filters` (an empty `wanted` keeps every value), in scene_id order,
    the first `limit` (0 = all), with `compatibility`'s columns (only the envs they need are built).
    Raises SceneSelectionError naming the flag whose values the database lacks, or when none is left."""
    frame = db.metadata()
    if frame.empty:
        raise SceneSelectionError(f"{db.root}: the scene database is empty")
    for flag, (column, wanted) in filters.items():
        values = set(wanted)
        if values and not values & set(frame[column]):
            raise SceneSelectionError(f"{flag} {sorted(values)} select no scenes (the database has "
                                      f"{sorted(set(db.metadata()[column]))})")
        if values:
            frame = frame[frame[column].isin(values)]
    if frame.empty:
        raise SceneSelectionError(f"{'/'.join(filters)} together select no scenes")
    frame = frame.sort_values("scene_id")
    return compatibility(SubsetDB(db, frame.head(limit) if limit else frame))


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


def _array_file_problem(db: SceneDB | SubsetDB, scene_id: str) -> str:
    """Why the scene's array file cannot be read ("" when it is there): a scene id that is not a name
    makes that scene incompatible, never the whole pre-flight fail."""
    try:
        return "" if db.arrays_path(scene_id).is_file() else "array file missing"
    except SceneDBError:
        return "scene_id is not a name (it would name a file outside arrays/)"


def _group_counts(frame: Any, by: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, grp in frame.groupby(by, sort=True):
        total = len(grp)
        compatible = int(grp["compatible"].sum())
        recoverable = int((grp["recoverable"] & grp["compatible"]).sum())
        out[str(key)] = {
            "total": total,
            "compatible": compatible,
            "incompatible": total - compatible,
            "recoverable": recoverable,
            "recoverable_fraction": round(recoverable / compatible, 4) if compatible else None,
        }
    return out


def check_report(db: SceneDB) -> dict[str, Any]:
    """The JSON-able pre-flight summary `gauntlet scenes check --json` prints."""
    frame = compatibility(db)
    total = len(frame)
    compatible = int(frame["compatible"].sum()) if total else 0
    recoverable = int((frame["recoverable"] & frame["compatible"]).sum()) if total else 0
    reasons = frame.loc[~frame["compatible"], "incompatible_reason"].value_counts().to_dict() if total else {}
    return {
        "db": str(db.root),
        "total": total,
        "compatible": compatible,
        "incompatible": total - compatible,
        "recoverable": recoverable,
        "recoverable_fraction": round(recoverable / compatible, 4) if compatible else None,
        "by_error_type": _group_counts(frame, "error_type") if total else {},
        "by_category": _group_counts(frame, "category") if total else {},
        "by_task": _group_counts(frame, "task") if total else {},
        "by_origin": _group_counts(frame, "origin") if total else {},
        "incompatible_reasons": {str(k): int(v) for k, v in reasons.items()},
    }
