"""LeRobot env plugin: `lerobot-eval --env.type=gauntlet --env.scenes=DB --policy.path=CKPT` evaluates a
LeRobot policy on Gauntlet's error-recovery scenes in LeRobot's own evaluator.

LeRobot imports this package at start-up (every installed `lerobot_env_*` distribution), which
registers the `gauntlet` env type (`config.GauntletScenesEnvConfig`).
"""

try:
    import gauntlet.envs.gym  # noqa: F401  (registers gauntlet/Scenes-v0)
except ImportError as exc:
    raise ImportError("lerobot_env_gauntlet needs Gauntlet's env side in this environment: "
                      "pip install --no-deps robosuite==1.5.2 <gauntlet checkout> (see Gauntlet's docs/gym.md)"
                      ) from exc

from lerobot_env_gauntlet.config import GauntletScenesEnvConfig

__all__ = ["GauntletScenesEnvConfig"]
