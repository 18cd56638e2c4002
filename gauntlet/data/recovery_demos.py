"""`gauntlet data collect --from-scenes DB`: the oracle recovering from scenes, as demonstrations.

For each selected scene (filters: tasks, error types, origins) the scene's exact state is restored
the way evaluation restores it (`SceneDB.restore`, into an env rebuilt from the scene's own
env_config), and the scripted expert the scene generation's oracle validation uses takes over from
there. Each recovery is recorded like any `data collect` episode (gauntlet.data.collect: state,
applied action, simulator state, images with --cameras, object state with --object-state, the exact
start state under "init/..."), tagged with `EpisodeTags` (recovery, scene_id, error_type, origin), so
it trains every recipe and exports to LeRobot with its tags.

A scene the current code cannot replay (another env fingerprint, a missing array file: the eval
pre-flight's `compatibility`) is skipped, never fatal; so is a scene already solved in its state.
Both are listed in info.json's `source.skipped` with their reasons, and recoveries that failed within
the horizon (dropped unless --keep-failures) in `source.not_recovered`. Scenes of the nominal origin
(a task's start state) may be selected too; their episodes are not recoveries (`recovery` False).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.data.collect import (
    AlreadySolvedError,
    RecordingOptions,
    add_recorded,
    check_object_state_width,
    env_metadata,
    record_from_here,
)
from gauntlet.data.commands import run_dataset_command
from gauntlet.data.dataset_schema import DatasetError, EpisodeTags
from gauntlet.data.dataset_writer import DatasetWriter
from gauntlet.envs.scene_db import HARVESTED, INJECTED, NOMINAL_ORIGIN, ORIGINS
from gauntlet.runtime.config_args import as_tuple, option, parse_config, require_at_least
from gauntlet.runtime.progress import Progress

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.envs.scene_db import SceneDB

TAG = "data collect"
EXPERT = "gauntlet.envs.experts.ScriptedExpert"


@dataclass(frozen=True)
class RecoveryConfig(RecordingOptions):
    """Records the scripted oracle recovering from a scene database's scenes, as tagged demonstrations."""

    from_scenes: str = option("", help="scene database whose scenes the oracle recovers from", required=True)
    tasks: tuple[str, ...] = option((), help="only these tasks (default: every task in the database)",
                                    aliases=("--task",))
    error_types: tuple[str, ...] = option((), help="only these error types (default: every one)",
                                          aliases=("--error-type",))
    origins: tuple[str, ...] = option((INJECTED, HARVESTED), help="only scenes of these origins",
                                      choices=ORIGINS)
    trials: int = option(1, help="recoveries recorded per scene; trial k's expert draws its noise from the "
                                 "scene's seed + k (more than one needs --noise-std > 0)")
    limit: int = option(0, help="at most this many scenes, in scene_id order (0 = every selected one)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("tasks", "error_types", "origins"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        if not self.from_scenes:
            raise ValueError("from_scenes: name the scene database to record recoveries from")
        if not self.origins:
            raise ValueError(f"origins: name at least one of {', '.join(ORIGINS)}")
        for origin in self.origins:
            if origin not in ORIGINS:
                raise ValueError(f"origins: {origin!r} is not one of {', '.join(ORIGINS)}")
        require_at_least(self, 1, "trials")
        require_at_least(self, 0, "limit")
        if self.trials > 1 and self.noise_std == 0:
            raise ValueError(f"trials={self.trials} needs noise_std > 0: the oracle is deterministic, so its "
                             "trials from one scene would be the same episode")


def collect_recoveries(cfg: RecoveryConfig) -> Path:
    """Records the oracle's recoveries from the selected scenes into `cfg.out`; returns the dataset path.

    Raises DatasetError if the database cannot be read or no recovery is kept.
    """
    from gauntlet.envs.env_errors import GauntletEnvError
    from gauntlet.envs.scene_check import select_scenes
    from gauntlet.envs.scene_db import SceneDB

    try:
        db = SceneDB.open(cfg.from_scenes)
        frame = select_scenes(db, {"--tasks": ("task", cfg.tasks), "--error-types": ("error_type", cfg.error_types),
                                   "--origins": ("origin", cfg.origins)}, cfg.limit)
    except GauntletEnvError as exc:
        raise DatasetError(cfg.from_scenes, str(exc)) from None
    scenes = frame[frame["compatible"]]
    if cfg.object_state:  # before any recording, not in the writer minutes later
        try:
            check_object_state_width(scenes["task"], "--object-state (select one width with --tasks)")
        except ValueError as exc:
            raise DatasetError(cfg.from_scenes, str(exc)) from None
    print(f"[{TAG}] recoveries from {len(scenes)} scenes x {cfg.trials} trials of {db.root} "
          f"({len(frame) - len(scenes)} incompatible, cameras={'on' if cfg.cameras else 'off'}) -> {cfg.out}",
          flush=True)
    source = {"kind": "recovery", "expert": EXPERT, "scenes": str(db.root), "horizon": cfg.horizon,
              "noise_std": cfg.noise_std, "trials": cfg.trials, "keep_failures": cfg.keep_failures,
              "object_state": cfg.object_state, "image_size": cfg.image_size if cfg.cameras else None,
              "filters": {"tasks": list(cfg.tasks), "error_types": list(cfg.error_types),
                          "origins": list(cfg.origins)}}
    with DatasetWriter(cfg.out, source=source, overwrite=cfg.overwrite) as writer:
        run = _Recording(writer, db, cfg, Progress(len(scenes) * cfg.trials, TAG, unit="episodes"))
        for r in frame[~frame["compatible"]].to_dict("records"):
            run.skip(r["scene_id"], r["incompatible_reason"])
        n_valid = int(round(len(scenes) * cfg.valid_fraction))
        for i, sid in enumerate(scenes["scene_id"]):
            run.splits[sid] = "valid" if i >= len(scenes) - n_valid else "train"
        for config_json, group in scenes.groupby("env_config", sort=False):
            run.record_group(config_json, group)
        writer.source.update(skipped=run.skipped, not_recovered=run.not_recovered)
        if not writer.num_episodes:
            writer.abort()
            raise DatasetError(cfg.out, f"no recovery was kept ({len(run.skipped)} scenes skipped, "
                                        f"{len(run.not_recovered)} recoveries failed within --horizon "
                                        f"{cfg.horizon}; raise --horizon or pass --keep-failures)")
        return writer.finalize()


class _Recording:
    """One `collect_recoveries` run: its writer, and what was skipped or not recovered so far."""

    def __init__(self, writer: DatasetWriter, db: SceneDB, cfg: RecoveryConfig, progress: Progress):
        self.writer, self.db, self.cfg, self.progress = writer, db, cfg, progress
        self.splits: dict[str, str] = {}  # scene_id -> split of its episodes
        self.skipped: list[dict[str, str]] = []  # {"scene_id", "reason"}
        self.not_recovered: list[str] = []  # "scene_id/trialK"

    def skip(self, scene_id: str, reason: str) -> None:
        self.skipped.append({"scene_id": scene_id, "reason": reason})
        print(f"[{TAG}] skipped scene {scene_id}: {reason}", flush=True)

    def record_group(self, config_json: str, group: pd.DataFrame) -> None:
        """Records the scenes sharing one env configuration in one env, built as theirs was."""
        from gauntlet.envs.env import EnvConfig, GauntletEnv

        env = GauntletEnv(EnvConfig.from_json(config_json))
        try:
            meta = env_metadata(env)
            for scene in group.to_dict("records"):
                self.writer.register_env(str(scene["task"]), str(scene["variant"]), meta)
                for trial in range(self.cfg.trials):
                    if not self.record(env, scene, trial):
                        break  # skipped: its other trials would be too
                    self.progress.update(extra=f"frames={self.writer.num_frames}")
        finally:
            env.close()

    def record(self, env: Any, scene: dict[str, Any], trial: int) -> bool:
        """One recovery from `scene`, written if it recovered or --keep-failures; False if skipped."""
        from gauntlet.envs.env_errors import GauntletEnvError
        from gauntlet.envs.experts import make_expert

        cfg, scene_id = self.cfg, str(scene["scene_id"])
        try:
            self.db.restore(env, scene_id)  # checks the fingerprint, as evaluation does
            expert = make_expert(env, seed=int(scene["seed"]) + trial, noise_std=cfg.noise_std)
            ep = record_from_here(env, expert, cfg.horizon, cfg.cameras, cfg.image_size, cfg.object_state)
        except (GauntletEnvError, AlreadySolvedError) as exc:
            self.skip(scene_id, str(exc))
            return False
        if not ep.success:
            self.not_recovered.append(f"{scene_id}/trial{trial}")
            print(f"[{TAG}] {scene_id} trial {trial}: the oracle did not recover within {cfg.horizon} steps; "
                  f"{'kept' if cfg.keep_failures else 'not kept'}", flush=True)
        if ep.success or cfg.keep_failures:
            tags = EpisodeTags(recovery=scene["origin"] != NOMINAL_ORIGIN, scene_id=scene_id,
                               error_type=str(scene["error_type"]), origin=str(scene["origin"]))
            add_recorded(self.writer, env, ep, task=str(scene["task"]), variant=str(scene["variant"]),
                         split=self.splits[scene_id], seed=None, source_episode=f"{scene_id}/trial{trial}",
                         tags=tags)
        return True


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(RecoveryConfig, argv, prog="gauntlet data collect --from-scenes DB",
                       description=RecoveryConfig.__doc__)
    return run_dataset_command("gauntlet data collect", TAG, lambda: collect_recoveries(cfg))


if __name__ == "__main__":
    sys.exit(main())
