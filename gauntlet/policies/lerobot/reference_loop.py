"""LeRobot's own rollout loop over recorded observations: what `select_action` answers, step by step.

The reference a served stateful policy is checked against (tests/deployments/test_lerobot_episode_state.py):
one policy instance per episode, `reset()` at its start, then `postprocessor(select_action(
preprocessor(observation)))` at every step, as lerobot-eval's rollout does, written without
Gauntlet's adapter. Run it where LeRobot is importable:
`ray.remote(runtime_env=environment.runtime_env())(select_action_loop)`.
"""

from __future__ import annotations

from typing import Any

from gauntlet.keys import ACTION_FEATURE, DATASET_CAMERAS, STATE_FEATURE, STATE_KEY


def select_action_loop(path: str, episodes: list[list[dict[str, Any]]], noise_seed: int = 0) -> list[Any]:
    """`episodes`: each a list of single observations (Gauntlet wire keys, no batch dimension), in step
    order. Returns per episode the (T, D) float32 actions select_action gave. Diffusion is handed the
    same seeded initial noise at every step (it uses it when its action queue is empty), as Gauntlet's
    adapter draws it (LeRobotAdapterConfig.noise_seed)."""
    import numpy as np
    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    config = PreTrainedConfig.from_pretrained(path, local_files_only=True)
    policy = get_policy_class(config.type).from_pretrained(path, config=config, local_files_only=True)
    pre, post = make_pre_post_processors(config, pretrained_path=path)
    kwargs: dict[str, Any] = {}
    if config.type == "diffusion":
        gen = torch.Generator().manual_seed(noise_seed)
        kwargs["noise"] = torch.randn((1, config.horizon, config.output_features[ACTION_FEATURE].shape[0]),
                                      generator=gen)
    out = []
    with torch.inference_mode():
        for episode in episodes:
            policy.reset()
            actions = []
            for obs in episode:
                raw: dict[str, Any] = {STATE_FEATURE: torch.tensor(np.asarray(obs[STATE_KEY], np.float32))[None]}
                for key in config.image_features:  # (1, 3, H, W) in [0, 1], as LeRobot's env wrappers give them
                    image = torch.tensor(np.asarray(obs[DATASET_CAMERAS[key.rsplit(".", 1)[-1]]]))
                    raw[key] = image.permute(2, 0, 1)[None].float() / 255.0
                raw["task"] = [""]
                actions.append(post(policy.select_action(pre(raw), **kwargs)).numpy()[0])
            out.append(np.stack(actions).astype(np.float32))
    return out
