"""The scene database: a directory any pandas user can read, with no pickle anywhere.

    DB/
      manifest.json        format name, schema_version, counts
      scenes.parquet       one metadata row per scene (columns: SCENE_COLUMNS)
      arrays/<id>.npz      simulator state ("state/...") and trajectory window ("traj/...")

Arrays are written first, each atomically (temp file + rename); the Parquet table is rewritten
atomically after them, so a crash mid-write never leaves a row pointing at a missing file and never
damages what was already there.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet import __version__
from gauntlet.envs.env_errors import EnvironmentMismatchError, GauntletEnvError
from gauntlet.envs.injectors import NOMINAL
from gauntlet.runtime.atomic_files import atomic_write
from gauntlet.runtime.manifests import read_json, write_json

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.envs.env import GauntletEnv

FORMAT_NAME = "gauntlet-scene-db"
SCHEMA_VERSION = 1

# column -> pandas dtype. Booleans are booleans, never strings.
SCENE_COLUMNS: dict[str, str] = {
    "scene_id": "string",
    "task": "string",
    "variant": "string",
    "error_type": "string",
    "category": "string",
    "phase": "string",
    "magnitude": "float64",
    "magnitude_unit": "string",
    "injection_params": "string",  # JSON object: everything the injector used
    "inject_step": "int64",  # control step at which the error was injected
    "settle_steps": "int64",  # hold steps between injection and capture
    "seed": "int64",  # env reset seed of the source rollout
    "env_config": "string",  # JSON of EnvConfig: rebuilds the env that replays this scene
    "fingerprint": "string",
    "schema_version": "int64",
    "recoverable": "bool",  # the scripted expert recovered from this scene
    "recovery_steps": "int64",  # steps the expert needed; -1 when it did not recover
    "label_motion": "string",  # error classifiers' labels (see error_classifiers.py)
    "label_grasp": "string",
    "label_command": "string",
    "gauntlet_version": "string",
    "origin": "string",  # where the scene's state came from: one of ORIGINS
    # Provenance of a harvested scene (PROVENANCE_DEFAULTS for every other one):
    "policy_target": "string",  # the --policy TARGET whose rollout failed
    "policy_digest": "string",  # its checkpoint's fingerprint, BASE@ADAPTER for an adapter ("" if none)
    "source_scene_id": "string",  # the scene that rollout started from
    "source_trial": "int64",  # its trial
    "source_step": "int64",  # the episode step at which a failure was detected
}

# What the provenance columns hold for a scene that was not harvested, and what a database written
# before they existed reads as.
PROVENANCE_DEFAULTS: dict[str, Any] = {"policy_target": "", "policy_digest": "", "source_scene_id": "",
                                       "source_trial": -1, "source_step": -1}

# A scene's origin. A database written before the column existed holds only injected and nominal
# scenes, so a missing origin is derived from the error type (`default_origin`): old databases read
# as they always meant.
INJECTED, NOMINAL_ORIGIN, HARVESTED = "injected", "nominal", "harvested"
ORIGINS = (INJECTED, NOMINAL_ORIGIN, HARVESTED)
# The error type of a harvested scene on whose error the classifiers agree on no label but "none".
UNLABELLED = "unlabelled"


SCENE_ID_MAX_CHARS = 200  # the longest scene id (it names a file)
# What a scene id may be: a file name, never a path.
SCENE_ID_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{SCENE_ID_MAX_CHARS - 1}}}"
SCENE_ID_RE = re.compile(SCENE_ID_PATTERN)


def default_origin(error_type: str) -> str:
    """The origin of a scene that does not record one: nominal for the nominal error type, else injected."""
    return NOMINAL_ORIGIN if error_type == NOMINAL else INJECTED


class SceneDBError(GauntletEnvError):
    """A scene database (or one file of it) is missing, corrupt or of the wrong version."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)


@dataclass
class SceneRecord:
    """One scene before it is written: its metadata row and its arrays."""

    row: dict[str, Any]
    arrays: dict[str, np.ndarray]


class SceneDB:
    """Open with `SceneDB.open(path)` (validates) or `SceneDB.create(path)`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._meta: pd.DataFrame | None = None

    # ------------------------------------------------------------------------------- lifecycle
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def table_path(self) -> Path:
        return self.root / "scenes.parquet"

    def arrays_path(self, scene_id: str) -> Path:
        # A database may come from someone else: its scene ids name files, so they must stay names.
        if not isinstance(scene_id, str) or SCENE_ID_RE.fullmatch(scene_id) is None:
            raise SceneDBError(self.table_path, f"scene_id {str(scene_id)[:60]!r} is not a name of the form "
                                                f"{SCENE_ID_PATTERN} (it would name a file outside arrays/)")
        return self.root / "arrays" / f"{scene_id}.npz"

    @classmethod
    def create(cls, root: Path | str, exist_ok: bool = True) -> SceneDB:
        """A new empty database, or the existing one at `root` (validated) when `exist_ok`."""
        root = Path(root)
        if (root / "manifest.json").exists():
            if not exist_ok:
                raise SceneDBError(root, "a scene database already exists here")
            return cls.open(root)
        if root.exists() and any(root.iterdir()):
            raise SceneDBError(root, "directory is not empty and is not a scene database")
        db = cls(root)
        (root / "arrays").mkdir(parents=True, exist_ok=True)
        db._write_manifest(0)
        return db

    @classmethod
    def open(cls, root: Path | str) -> SceneDB:
        root = Path(root)
        if not root.exists():
            raise SceneDBError(root, "no such scene database (directory does not exist)")
        manifest = root / "manifest.json"
        info = read_json(manifest, "scene database manifest", error=SceneDBError,
                         hint="not a scene database: run `gauntlet scenes generate`")
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise SceneDBError(manifest, f"not a {FORMAT_NAME} manifest")
        if info.get("schema_version") != SCHEMA_VERSION:
            raise SceneDBError(
                manifest,
                f"schema_version {info.get('schema_version')!r} is not supported (this code reads "
                f"{SCHEMA_VERSION}); regenerate the database with this version of gauntlet",
            )
        return cls(root)

    def _write_manifest(self, count: int) -> None:
        info = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "num_scenes": count,
                "gauntlet_version": __version__}
        write_json(self.manifest_path, info, indent=2)

    # -------------------------------------------------------------------------------- reading
    def metadata(self) -> pd.DataFrame:
        """All scene rows, typed. An empty database gives an empty, typed frame."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._meta is not None:
            return self._meta
        if not self.table_path.exists():
            frame = pd.DataFrame({c: pd.Series(dtype=t) for c, t in SCENE_COLUMNS.items()})
        else:
            try:
                frame = pq.read_table(self.table_path).to_pandas()
            except (pa.ArrowInvalid, OSError) as exc:
                raise SceneDBError(self.table_path, f"corrupt Parquet table ({exc})") from None
            if "error_type" in frame.columns:  # (a table without it is refused just below)
                derived, recorded = frame["error_type"].map(default_origin), frame.get("origin")
                frame["origin"] = derived if recorded is None else recorded.mask(
                    recorded.isna() | (recorded == ""), derived)
            for column, default in PROVENANCE_DEFAULTS.items():
                if column not in frame.columns:
                    frame[column] = default
            missing = [c for c in SCENE_COLUMNS if c not in frame.columns]
            if missing:
                raise SceneDBError(self.table_path, f"missing columns {missing}")
            bad = frame["schema_version"] != SCHEMA_VERSION
            if bad.any():
                raise SceneDBError(self.table_path, f"{int(bad.sum())} rows have a schema_version other than {SCHEMA_VERSION}")
            frame = frame.astype(SCENE_COLUMNS)
        self._meta = frame
        return frame

    def __len__(self) -> int:
        return len(self.metadata())

    def row(self, scene_id: str) -> dict[str, Any]:
        frame = self.metadata()
        hit = frame[frame["scene_id"] == scene_id]
        if hit.empty:
            raise SceneDBError(self.table_path, f"no scene with scene_id {scene_id!r}")
        return hit.iloc[0].to_dict()

    def load_arrays(self, scene_id: str) -> dict[str, np.ndarray]:
        path = self.arrays_path(scene_id)
        if not path.is_file():
            raise SceneDBError(path, "scene array file is missing")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            raise SceneDBError(path, f"corrupt scene array file ({type(exc).__name__}: {exc})") from None

    def load_state(self, scene_id: str) -> dict[str, np.ndarray]:
        arrays = self.load_arrays(scene_id)
        state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
        if "mj_state" not in state:
            raise SceneDBError(self.arrays_path(scene_id), "has no simulator state (state/mj_state)")
        return state

    def restore(self, env: GauntletEnv, scene_id: str) -> dict[str, Any]:
        """Puts `env` into the scene. Raises EnvironmentMismatchError if the fingerprints differ."""
        row = self.row(scene_id)
        if row["fingerprint"] != env.fingerprint:
            raise EnvironmentMismatchError(scene_id, row["fingerprint"], env.fingerprint)
        env.set_state(self.load_state(scene_id))
        return row

    # -------------------------------------------------------------------------------- writing
    def add(self, records: list[SceneRecord]) -> int:
        """Appends scenes; returns how many. Duplicate scene_ids are refused before any write."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not records:
            return 0
        existing = self.metadata()
        new_ids = [r.row["scene_id"] for r in records]
        clash = set(new_ids) & set(existing["scene_id"]) or {i for i in new_ids if new_ids.count(i) > 1}
        if clash:
            raise SceneDBError(self.table_path, f"scene_id(s) already present: {sorted(clash)[:5]}")
        for rec in records:
            missing = [c for c in SCENE_COLUMNS if c not in rec.row]
            if missing:
                raise ValueError(f"scene {rec.row.get('scene_id')!r} row lacks columns {missing}")
            if rec.row["origin"] not in ORIGINS:
                raise ValueError(f"scene {rec.row['scene_id']!r}: origin {rec.row['origin']!r} is not one of {ORIGINS}")
            for key, arr in rec.arrays.items():
                if np.asarray(arr).dtype == object:
                    raise ValueError(f"scene {rec.row['scene_id']!r}: array {key!r} has dtype object")
        for rec in records:
            arrays = {k: np.asarray(v) for k, v in rec.arrays.items()}

            def write(tmp: str, arrays: dict[str, np.ndarray] = arrays) -> None:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, **arrays)

            atomic_write(self.arrays_path(rec.row["scene_id"]), write)
        new = pd.DataFrame([{c: r.row[c] for c in SCENE_COLUMNS} for r in records]).astype(SCENE_COLUMNS)
        frame = pd.concat([existing, new], ignore_index=True) if len(existing) else new
        table = pa.Table.from_pandas(frame, preserve_index=False)
        atomic_write(self.table_path, lambda tmp: pq.write_table(table, tmp))
        self._meta = frame
        self._write_manifest(len(frame))
        return len(records)
