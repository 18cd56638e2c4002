"""`ScenesEnv`: a gymnasium env whose every reset restores the next selected scene of a scene database.

The scenes are selected as `gauntlet eval` selects them (`scene_check.select_scenes`: the same filters,
scene_id order, the same pre-flight): a scene the current code cannot replay (fingerprint mismatch,
missing array file) is skipped and recorded in `skipped_scenes`, never a crash. A reset restores its
scene with `SceneDB.restore`, the call eval's episodes make, and steps `GauntletEnv.step`; observations
are `GauntletEnv.observe`'s, images resized as eval resizes them for a policy (`resize_image`).

Scene order: the k-th reset (0-based) of the env with `shard_index` i of `num_shards` n restores
compatible scene (i + k * n) mod N. A vector env of n sub-envs, sub-env i the i-th shard, thus runs
episode e (its sub-env's reset e // n) on scene e mod N: LeRobot's evaluator numbers its episodes so.
Resets with `options={"scene_id": ID}` restore that scene instead, and do not advance the order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from gauntlet.data.images import resize_image
from gauntlet.envs.env import EnvConfig, GauntletEnv
from gauntlet.envs.gym import PIXELS_OBS, STATE_OBS
from gauntlet.envs.scene_check import SCENE_FILTERS, SceneSelectionError, select_scenes
from gauntlet.envs.scene_db import SceneDB, SceneDBError
from gauntlet.envs.tasks import get_task
from gauntlet.keys import ACTION_DIM, DATASET_CAMERAS, ROBOSUITE_CAMERAS, STATE_DIM, STATE_KEY
from gauntlet.runtime.config_args import as_tuple

# Wire key -> robosuite camera: the camera a dataset camera name (DATASET_CAMERAS) is rendered from.
_ROBOSUITE_CAMERA_OF = {wire: cam for cam, wire in ROBOSUITE_CAMERAS.items()}


class ScenesEnvArgumentError(ValueError):
    """A bad argument of `gymnasium.make("gauntlet/Scenes-v0", ...)`; the message names it."""

    def __init__(self, argument: str, problem: str):
        super().__init__(f"{argument}: {problem}")
        self.argument = argument


@dataclass(frozen=True)
class ScenesEnvConfig:
    """The keyword arguments of `gymnasium.make("gauntlet/Scenes-v0", ...)` (and of the LeRobot plugin)."""

    scenes: str  # scene database directory (`gauntlet scenes generate --out`)
    # Scene filters, as `gauntlet eval`'s flags of the same names (SCENE_FILTERS): "a,b" or a sequence;
    # empty keeps every value.
    tasks: tuple[str, ...] = ()  # Gauntlet task names, e.g. "lift,stack"
    variants: tuple[str, ...] = ()  # placement variants, e.g. "D0"
    error_types: tuple[str, ...] = ()  # injected error types, e.g. "drop,object_push" ("none": nominal)
    categories: tuple[str, ...] = ()  # error categories, e.g. "impulse"
    limit: int = 0  # only the first `limit` selected scenes (scene_id order); 0 = all
    # Side (px) of the observation images, resized as eval resizes them for a policy trained at that
    # size; 0 = the size the database's scenes are rendered at (they must all share one).
    image_size: int = 0
    # Dataset camera names (keys.DATASET_CAMERAS) under obs["pixels"], i.e. LeRobot's
    # observation.images.<cam>; empty: no images are rendered.
    cameras: tuple[str, ...] = tuple(DATASET_CAMERAS)
    render_camera: str = "agentview"  # the dataset camera `render()` returns (videos), at the scenes' size
    shard_index: int = 0  # this env's share of the scenes: see the module docstring
    num_shards: int = 1  # how many envs share the scenes (a vector env's sub-env count)

    def __post_init__(self) -> None:
        for name in (*SCENE_FILTERS, "cameras"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        if not str(self.scenes):
            raise ScenesEnvArgumentError("scenes", "a scene database directory is required")
        object.__setattr__(self, "scenes", str(self.scenes))
        if self.limit < 0:
            raise ScenesEnvArgumentError("limit", f"must be >= 0, got {self.limit}")
        if self.image_size != 0 and not 8 <= self.image_size <= 1024:
            raise ScenesEnvArgumentError("image_size", f"must be 0 (the scenes' own) or in [8, 1024], "
                                                       f"got {self.image_size}")
        for cam in (*self.cameras, self.render_camera):
            if cam not in DATASET_CAMERAS:
                argument = "render_camera" if cam == self.render_camera else "cameras"
                raise ScenesEnvArgumentError(argument, f"unknown camera {cam!r}; known: {', '.join(DATASET_CAMERAS)}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ScenesEnvArgumentError("shard_index", f"must be in [0, num_shards={self.num_shards}), "
                                                        f"got {self.shard_index}")


def open_database(scenes: str) -> SceneDB:
    """The scene database, or a ScenesEnvArgumentError naming `scenes`."""
    try:
        db = SceneDB.open(scenes)
        db.metadata()
        return db
    except SceneDBError as exc:
        raise ScenesEnvArgumentError("scenes", str(exc)) from None


def database_image_size(db: SceneDB) -> int:
    """The side (px) every scene of `db` is rendered at; raises naming `image_size` if they differ."""
    sizes = {EnvConfig.from_json(text).image_size for text in db.metadata()["env_config"].unique()}
    if len(sizes) != 1:
        raise ScenesEnvArgumentError("image_size", f"{db.root}: its scenes are rendered at {sorted(sizes)} px; "
                                                   f"pass the size the policy takes")
    return sizes.pop()


class ScenesEnv(gym.Env):
    """Episodes on a scene database's selected scenes; see the module docstring. One env per process
    (MuJoCo's renderer); a vector env runs several."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": EnvConfig.control_freq}

    def __init__(self, render_mode: str | None = "rgb_array", **kwargs: Any):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ScenesEnvArgumentError("render_mode", f"must be None or 'rgb_array', got {render_mode!r}")
        self.config = config = ScenesEnvConfig(**kwargs)
        self.render_mode = render_mode
        self.db = open_database(config.scenes)
        filters = {name: (column, getattr(config, name)) for name, column in SCENE_FILTERS.items()}
        try:
            frame = select_scenes(self.db, filters, config.limit)
        except SceneSelectionError as exc:  # its message names the filter
            raise ScenesEnvArgumentError("scenes", str(exc)) from None
        # Scenes this code cannot replay: recorded (as eval's skipped rows), never run.
        self.skipped_scenes: list[dict[str, str]] = [
            {"scene_id": r["scene_id"], "error_type": r["error_type"], "reason": r["incompatible_reason"]}
            for r in frame.loc[~frame["compatible"]].to_dict("records")]
        self._scenes: list[dict[str, Any]] = frame.loc[frame["compatible"]].to_dict("records")
        if not self._scenes:
            reasons = sorted({s["reason"] for s in self.skipped_scenes})
            raise ScenesEnvArgumentError("scenes", f"none of the {len(frame)} selected scenes of {config.scenes} "
                                                   f"can be replayed by this code ({'; '.join(reasons)})")
        if self.skipped_scenes:
            print(f"[gauntlet/Scenes-v0] {len(self.skipped_scenes)} of {len(frame)} selected scenes skipped "
                  f"(see skipped_scenes): {self.skipped_scenes[0]['reason']}", flush=True)
        self._check_cameras()
        # Videos play at the scenes' control rate (LeRobot's evaluator reads render_fps).
        control_freq = EnvConfig.from_json(self._scenes[0]["env_config"]).control_freq
        self.metadata = {**type(self).metadata, "render_fps": control_freq}
        self.image_size = config.image_size or database_image_size(self.db)
        self.observation_space = self._observation_space()
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._envs: dict[str, GauntletEnv] = {}  # by scene env_config JSON: built on first use
        self._env: GauntletEnv | None = None  # the env of the current episode
        self._scene = self._scenes[config.shard_index % len(self._scenes)]
        self._resets = 0  # resets that advanced the order
        self._unrestorable: set[str] = set()  # scene ids whose restore failed (also in skipped_scenes)

    # ------------------------------------------------------------------------------------ setup
    def _check_cameras(self) -> None:
        """Every requested camera must be one the selected scenes' envs render."""
        for text in {s["env_config"] for s in self._scenes}:
            rendered = EnvConfig.from_json(text).cameras
            for cam in (*self.config.cameras, self.config.render_camera):
                if _ROBOSUITE_CAMERA_OF[DATASET_CAMERAS[cam]] not in rendered:
                    argument = "cameras" if cam in self.config.cameras else "render_camera"
                    raise ScenesEnvArgumentError(argument, f"camera {cam!r} is not rendered by the selected "
                                                           f"scenes' env (cameras {list(rendered)})")

    def _observation_space(self) -> gym.spaces.Dict:
        size = self.image_size
        spaces: dict[str, gym.Space] = {STATE_OBS: gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)}
        if self.config.cameras:
            spaces[PIXELS_OBS] = gym.spaces.Dict({cam: gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
                                                  for cam in self.config.cameras})
        return gym.spaces.Dict(spaces)

    # ---------------------------------------------------------------------------------- episodes
    @property
    def scene_ids(self) -> list[str]:
        """The selected scenes this env can replay, in the order its resets take them (from shard_index)."""
        n, shards = len(self._scenes), self.config.num_shards
        return [self._scenes[(self.config.shard_index + k * shards) % n]["scene_id"]
                for k in range(n // math.gcd(n, shards))]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restores the next scene (or `options["scene_id"]`). `seed` seeds only `np_random`: a scene
        restores its whole state, so the episode does not depend on it."""
        super().reset(seed=seed)
        wanted = (options or {}).get("scene_id")
        if wanted is not None:
            scene = next((s for s in self._scenes if s["scene_id"] == wanted), None)
            if scene is None:
                raise ScenesEnvArgumentError("options['scene_id']", f"{wanted!r} is not one of the selected "
                                                                    f"scenes this env can replay")
            self._restore(scene)
        else:
            self._restore_next()
        return self._observation(), self._info()

    def _restore_next(self) -> None:
        """Restores the next scene of this env's order; one whose restore fails is recorded and passed."""
        n = len(self._scenes)
        for _ in range(n):
            scene = self._scenes[(self.config.shard_index + self._resets * self.config.num_shards) % n]
            self._resets += 1
            if scene["scene_id"] in self._unrestorable:
                continue
            try:
                self._restore(scene)
                return
            except Exception as exc:  # noqa: BLE001 - one bad scene is recorded, never fatal
                self._unrestorable.add(scene["scene_id"])
                self.skipped_scenes.append({"scene_id": scene["scene_id"], "error_type": scene["error_type"],
                                            "reason": f"restore failed: {type(exc).__name__}: {exc}"})
                print(f"[gauntlet/Scenes-v0] {self.skipped_scenes[-1]['reason']}", flush=True)
        raise RuntimeError(f"scenes: no scene of {self.config.scenes} could be restored "
                           f"(see skipped_scenes: {self.skipped_scenes[-1]['reason']})")

    def _restore(self, scene: dict[str, Any]) -> None:
        env = self._envs.get(scene["env_config"])
        if env is None:
            env = self._envs[scene["env_config"]] = GauntletEnv(EnvConfig.from_json(scene["env_config"]))
        self.db.restore(env, scene["scene_id"])  # as eval's episodes restore (fingerprint checked)
        self._env, self._scene = env, scene

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """One control step; the episode terminates when the task is solved (as eval's episodes end)."""
        if self._env is None:
            raise RuntimeError("step() before reset(): reset restores the first scene")
        solved = self._env.step(action)
        info = self._info()
        info["is_success"] = solved
        return self._observation(), float(solved), solved, False, info

    # ------------------------------------------------------------------------------ observation
    def _observation(self) -> dict[str, Any]:
        assert self._env is not None
        obs = self._env.observe(images=bool(self.config.cameras))
        out: dict[str, Any] = {STATE_OBS: obs[STATE_KEY]}
        if self.config.cameras:
            out[PIXELS_OBS] = {cam: resize_image(obs[DATASET_CAMERAS[cam]], self.image_size)
                               for cam in self.config.cameras}
        return out

    def _info(self) -> dict[str, Any]:
        return {"scene_id": self._scene["scene_id"], "error_type": self._scene["error_type"],
                "task": self._scene["task"]}

    @property
    def gauntlet_env(self) -> GauntletEnv | None:
        """The env of the current episode (privileged access: a scripted oracle, `get_state`); None
        before the first reset."""
        return self._env

    @property
    def task(self) -> str:
        """The current scene's Gauntlet task (e.g. "lift"); before the first reset, the first scene's."""
        return str(self._scene["task"])

    @property
    def task_description(self) -> str:
        """The current scene's language instruction: what Gauntlet's policies get as their prompt, and
        LeRobot's evaluator passes as `task`."""
        return get_task(self.task).instruction

    def render(self) -> np.ndarray | None:
        """(H, W, 3) uint8 from `render_camera` at the scenes' own size (None without render_mode)."""
        if self.render_mode is None or self._env is None:
            return None
        return self._env.render(_ROBOSUITE_CAMERA_OF[DATASET_CAMERAS[self.config.render_camera]])

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self._env = None
