"""Gauntlet's scenes as a gymnasium environment: `gymnasium.make("gauntlet/Scenes-v0", scenes=DB, ...)`.

Importing this package registers the id (it imports gymnasium and nothing heavier); the env itself
(`scenes_env.ScenesEnv`) is imported by `gymnasium.make`. Observations follow the conventions of
LeRobot's gym envs (gym_aloha, gym_pusht, LIBERO): `agent_pos` and a `pixels` dict of cameras, which
LeRobot's `preprocess_observation` turns into `observation.state` and `observation.images.<cam>`
(`LEROBOT_FEATURES_MAP` below). The LeRobot plugin (plugins/lerobot_env_gauntlet) builds on it.
"""

from __future__ import annotations

import gymnasium

from gauntlet.keys import ACTION_FEATURE, DATASET_CAMERAS, STATE_FEATURE, image_feature

ENV_ID = "gauntlet/Scenes-v0"
ENTRY_POINT = "gauntlet.envs.gym.scenes_env:ScenesEnv"
# Steps before an episode is truncated, as `gauntlet eval`'s default --horizon (a test holds them equal),
# so both evaluators give an episode the same time.
DEFAULT_MAX_EPISODE_STEPS = 300

# Observation keys, as LeRobot's gym envs name them (lerobot.envs.utils.preprocess_observation).
STATE_OBS = "agent_pos"  # (8,) float32: keys.STATE_KEY's vector
PIXELS_OBS = "pixels"  # {dataset camera name: (H, W, 3) uint8}
ACTION_OBS = ACTION_FEATURE  # the name LeRobot's env configs give the action in `features`

# Gym observation key (a camera as "pixels/<cam>") -> LeRobot feature name, for an EnvConfig's features_map.
LEROBOT_FEATURES_MAP: dict[str, str] = {
    ACTION_OBS: ACTION_FEATURE,
    STATE_OBS: STATE_FEATURE,
    **{f"{PIXELS_OBS}/{cam}": image_feature(cam) for cam in DATASET_CAMERAS},
}

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point=ENTRY_POINT, max_episode_steps=DEFAULT_MAX_EPISODE_STEPS)
