"""`gauntlet data merge A B [...] --out DS`: datasets concatenated into one, episode by episode.

What makes a mixed training set, e.g. nominal demonstrations (`data collect`) plus recovery
demonstrations (`data collect --from-scenes`): every episode keeps its frames, split, seed, tags
(`recovery`, `scene_id`, `error_type`, `origin`), simulator states and object state; images are
decoded and re-encoded as PNG (lossless: the pixels are the same). The parts must agree on what a
frame is (fps, state and action widths and names; cameras and sizes, simulator states and object
state width, which the writer checks episode by episode). Their env metadata is united by task and
variant (`unite_env`): D0 demonstrations merge with D1 ones, and a task and variant recorded in two
configurations keeps both entries. A part written when a single variant's entry was keyed by the bare
task name is read under its "task/variant" key. The printed summary (and `data stats`) states the
frames of each part and how many are recovery frames. Run `gauntlet data stats` on the result.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gauntlet.data.commands import run_dataset_command
from gauntlet.data.dataset_reader import Dataset, open_dataset
from gauntlet.data.dataset_schema import IMAGE_FEATURES, DatasetError, EpisodeTags, unite_env
from gauntlet.data.dataset_writer import DatasetWriter
from gauntlet.keys import ACTION_FEATURE, OBJECT_STATE_FEATURE, PROMPT_COLUMN, STATE_FEATURE
from gauntlet.runtime.config_args import as_tuple, option, parse_config
from gauntlet.runtime.progress import Progress

TAG = "data merge"
_FRAME_FIELDS = ("fps", "state_dim", "action_dim")  # info.json fields the parts must agree on


@dataclass(frozen=True)
class MergeConfig:
    """Concatenates datasets into a new one (e.g. nominal + recovery demonstrations), in the order given."""

    datasets: tuple[str, ...] = option(help="datasets to merge, in order", positional=True)
    out: str = option(help="dataset directory to create")
    overwrite: bool = option(False, help="replace an existing dataset at --out")

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", as_tuple(self.datasets))
        if len(self.datasets) < 2:
            raise ValueError(f"datasets: name at least two to merge, got {len(self.datasets)}")


def _check_parts(parts: list[Dataset]) -> dict[str, dict[str, Any]]:
    """The parts' united env metadata. Raises DatasetError naming the part and frame field that disagree."""
    first = parts[0]
    envs: dict[str, dict[str, Any]] = {}
    for ds in parts:
        for name in _FRAME_FIELDS:
            if ds.info[name] != first.info[name]:
                raise DatasetError(ds.info_path, f"{name} is {ds.info[name]}, but {first.root}'s is "
                                                 f"{first.info[name]} (merged parts must agree)")
        for feature in (STATE_FEATURE, ACTION_FEATURE):
            names, want = ds.info["features"][feature].get("names"), first.info["features"][feature].get("names")
            if names != want:
                raise DatasetError(ds.info_path, f"features[{feature!r}].names {names} differ from "
                                                 f"{first.root}'s {want}")
        for key, meta in ds.info.get("envs", {}).items():
            unite_env(envs, *_task_variant(ds, key, meta), meta)
    return envs


def _task_variant(ds: Dataset, key: str, meta: dict[str, Any]) -> tuple[str, str]:
    """(task, variant) of one of a part's `envs` entries: from its "task/variant[#digest]" key, or for a
    bare task key (older datasets) from its env_config, else the one variant its episodes of that task have."""
    task, _, variant = key.partition("/")
    if variant:
        return task, variant.partition("#")[0]
    variant = str(meta.get("env_config", {}).get("variant", ""))
    if not variant:
        seen = sorted(set(ds.episodes.loc[ds.episodes["task"] == task, "variant"].astype(str)))
        variant = seen[0] if len(seen) == 1 else "/".join(seen) or "unknown"
    return task, variant


def merge_datasets(cfg: MergeConfig) -> Path:
    """Writes `cfg.out` holding every episode of `cfg.datasets`, in order; returns its path."""
    parts = [open_dataset(p) for p in cfg.datasets]
    envs = _check_parts(parts)
    first = parts[0]
    source = {"kind": "merge", "parts": [
        {"dataset": str(ds.root), "episodes": ds.num_episodes, "frames": ds.num_frames,
         "recovery_frames": int(ds.episodes.loc[ds.episodes["recovery"], "length"].sum()),
         "source": ds.info["source"]} for ds in parts]}
    for part in source["parts"]:
        print(f"[{TAG}] {part['dataset']}: {part['episodes']} episodes, {part['frames']} frames "
              f"({part['recovery_frames']} recovery frames)", flush=True)
    progress = Progress(sum(ds.num_episodes for ds in parts), TAG, unit="episodes")
    feats = first.info["features"]
    with DatasetWriter(cfg.out, source=source, fps=first.fps, robot=first.info.get("robot", "Panda"),
                       state_dim=first.state_dim, action_dim=first.action_dim, envs=envs, overwrite=cfg.overwrite,
                       state_names=feats[STATE_FEATURE].get("names"),
                       action_names=feats[ACTION_FEATURE].get("names")) as writer:
        for ds in parts:
            for ep in range(ds.num_episodes):
                _copy_episode(writer, ds, ep)
                progress.update(extra=f"frames={writer.num_frames}")
        return writer.finalize()


def _copy_episode(writer: DatasetWriter, ds: Dataset, ep: int) -> int:
    """Adds episode `ep` of `ds` to `writer` with everything it holds."""
    import pandas as pd

    row = ds.episodes.iloc[ep]
    frames = ds.episode(ep, images=True)
    sim: dict[str, Any] = ds.sim(ep) if ds.has_sim else {}
    objects = (ds.load_columns([OBJECT_STATE_FEATURE], [ep])[OBJECT_STATE_FEATURE]
               if OBJECT_STATE_FEATURE in ds.info["features"] else None)
    seed = row["seed"]
    return writer.add_episode(
        frames[STATE_FEATURE], frames[ACTION_FEATURE], task=str(row["task"]), variant=str(row["variant"]),
        prompt=str(row[PROMPT_COLUMN]), success=bool(row["success"]), sim_states=sim.pop("sim_states", None),
        model_xml=sim.pop("model_xml", None), images={cam: frames[IMAGE_FEATURES[cam]] for cam in ds.cameras},
        split=str(row["split"]), seed=None if pd.isna(seed) else int(seed), fingerprint=str(row["fingerprint"]),
        source_episode=str(row["source_episode"]), sim_extra=sim, object_states=objects,
        tags=EpisodeTags.from_row(row),
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(MergeConfig, argv, prog="gauntlet data merge", description=MergeConfig.__doc__)
    return run_dataset_command("gauntlet data merge", TAG, lambda: merge_datasets(cfg))


if __name__ == "__main__":
    sys.exit(main())
