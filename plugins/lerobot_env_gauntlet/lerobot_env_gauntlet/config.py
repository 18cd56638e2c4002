"""`--env.type=gauntlet`: LeRobot's env config for Gauntlet's scenes (`gauntlet/Scenes-v0`).

The vector env LeRobot's evaluator steps is built here rather than by `EnvConfig.create_envs`: sub-env
i of K takes the scenes i, i + K, ... (`shard_index`/`num_shards`), so episode e of `lerobot-eval` runs
on selected scene e mod N, as Gauntlet numbers them; and each sub-env is wrapped in LeRobot's own
`FreezeAfterEpisodeEnd`, so the vector env's autoreset of a finished sub-env neither steps it again nor
takes a scene from the order (only the evaluator's reset of a new rollout does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gymnasium as gym
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs.configs import EnvConfig
from lerobot.envs.utils import freeze_after_episode_end

from gauntlet.envs.env import EnvConfig as GauntletEnvConfig
from gauntlet.envs.gym import (
    ACTION_OBS,
    DEFAULT_MAX_EPISODE_STEPS,
    ENV_ID,
    LEROBOT_FEATURES_MAP,
    PIXELS_OBS,
    STATE_OBS,
)
from gauntlet.envs.gym.scenes_env import ScenesEnvConfig, database_image_size, open_database
from gauntlet.keys import ACTION_DIM, DATASET_CAMERAS, STATE_DIM
from gauntlet.runtime.config_args import as_tuple


@EnvConfig.register_subclass("gauntlet")
@dataclass
class GauntletScenesEnvConfig(EnvConfig):
    """`--env.*` flags. List flags are comma-separated, as LeRobot's own (`--env.tasks=lift,stack`)."""

    task: str | None = "Scenes-v0"  # the gym id's name (gauntlet/Scenes-v0); Gauntlet's tasks: `tasks`
    fps: int = GauntletEnvConfig.control_freq  # control steps per second of Gauntlet's envs (videos)
    scenes: str = ""  # scene database directory (`gauntlet scenes generate --out`); required
    tasks: str = ""  # keep scenes of these Gauntlet tasks; empty keeps all (as `gauntlet eval --tasks`)
    variants: str = ""  # as `gauntlet eval --variants`
    error_types: str = ""  # as `gauntlet eval --error-types`
    categories: str = ""  # as `gauntlet eval --categories`
    limit: int = 0  # only the first `limit` selected scenes (scene_id order); 0 = all
    # Side (px) of the images the policy gets, resized as `gauntlet eval` resizes them for a policy; 0 =
    # the scenes' own size. Set it to the size the policy was trained at.
    image_size: int = 0
    cameras: str = ",".join(DATASET_CAMERAS)  # observation.images.<cam> the env renders
    episode_length: int = DEFAULT_MAX_EPISODE_STEPS  # steps before truncation (`gauntlet eval --horizon`)
    # LeRobot's feature declarations: derived in __post_init__ from the fields above, never set by hand.
    features: dict[str, PolicyFeature] = field(default_factory=dict)
    features_map: dict[str, str] = field(default_factory=lambda: dict(LEROBOT_FEATURES_MAP))

    def __post_init__(self) -> None:
        self.features = {ACTION_OBS: PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,)),
                         STATE_OBS: PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,))}
        if not self.scenes:  # (a bare config, e.g. listed by --help: images are declared once scenes are known)
            return
        size = self.image_size or database_image_size(open_database(self.scenes))
        for cam in as_tuple(self.cameras):
            self.features[f"{PIXELS_OBS}/{cam}"] = PolicyFeature(type=FeatureType.VISUAL, shape=(size, size, 3))

    @property
    def package_name(self) -> str:
        return "gauntlet.envs.gym"  # importing it registers ENV_ID

    @property
    def gym_id(self) -> str:
        return ENV_ID

    def scenes_config(self, shard_index: int = 0, num_shards: int = 1) -> ScenesEnvConfig:
        """The gym env's arguments (validated: a bad flag fails here, naming it, before any env starts)."""
        return ScenesEnvConfig(scenes=self.scenes, tasks=self.tasks, variants=self.variants,
                               error_types=self.error_types, categories=self.categories, limit=self.limit,
                               image_size=self.image_size, cameras=self.cameras, shard_index=shard_index,
                               num_shards=num_shards)

    @property
    def gym_kwargs(self) -> dict[str, Any]:
        return {**vars(self.scenes_config()), "max_episode_steps": self.episode_length}

    def create_envs(self, n_envs: int, use_async_envs: bool = False) -> dict[str, dict[int, gym.vector.VectorEnv]]:
        """{"gauntlet": {0: a vector env of n_envs sub-envs, each its shard of the scenes}}."""
        # "module:id": a sub-env in its own process (AsyncVectorEnv) imports the module that registers the id.
        fns = [freeze_after_episode_end(partial(
            gym.make, f"{self.package_name}:{ENV_ID}", disable_env_checker=self.disable_env_checker,
            max_episode_steps=self.episode_length, **vars(self.scenes_config(i, n_envs))))
            for i in range(n_envs)]
        mode = gym.vector.AutoresetMode.SAME_STEP
        if use_async_envs and n_envs > 1:
            # Each sub-env in its own process (MuJoCo's renderer is per process), as LeRobot's own envs.
            vec: gym.vector.VectorEnv = gym.vector.AsyncVectorEnv(fns, context="forkserver", autoreset_mode=mode)
        else:
            vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
        return {self.type: {0: vec}}
