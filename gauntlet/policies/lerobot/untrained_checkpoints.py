"""Randomly initialised LeRobot policies shaped for Gauntlet's environment, saved as LeRobot would.

For the LeRobot serving benchmark (`benchmarks/bench_lerobot_serving.py`, which needs a checkpoint
when none is given) and the tests (no model hub, no dataset): LeRobot's own config classes, policy classes and
processor factory build the policy, and `save_pretrained` writes the directory a researcher would
have after training (config.json, model.safetensors, policy_pre/postprocessor.json + stats).
Run it where LeRobot is importable: `ray.remote(runtime_env=environment.runtime_env())(save_random_policy)`.
"""

from __future__ import annotations

from typing import Any

from gauntlet.keys import (
    ACTION_DIM,
    ACTION_FEATURE,
    DATASET_CAMERAS,
    STATE_DIM,
    STATE_FEATURE,
    STATE_KEY,
    image_feature,
)

# Small, CPU-fast shapes: the architecture is LeRobot's, only its sizes are cut down.
SMALL_OVERRIDES: dict[str, dict[str, Any]] = {
    "act": {"chunk_size": 10, "n_action_steps": 5, "dim_model": 64, "n_heads": 2, "dim_feedforward": 128,
            "n_encoder_layers": 1, "n_decoder_layers": 1, "n_vae_encoder_layers": 1, "latent_dim": 8,
            "pretrained_backbone_weights": None},
    "diffusion": {"n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "down_dims": (32, 64), "kernel_size": 3,
                  "diffusion_step_embed_dim": 32, "spatial_softmax_num_keypoints": 8, "n_groups": 8,
                  "noise_scheduler_type": "DDIM", "num_train_timesteps": 20, "num_inference_steps": 3,
                  # GroupNorm (0.4.x's default; 0.5+ defaults to BatchNorm, whose shape probe at batch 1
                  # fails on a 32 px image's 1x1 feature map in training mode).
                  "pretrained_backbone_weights": None, "use_group_norm": True},
}


def _stats(dim: int, seed: int) -> dict[str, Any]:
    """Non-trivial normalisation statistics, so the saved processors do real work."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=gen) * 0.1
    std = torch.rand(dim, generator=gen) + 0.5
    return {"mean": mean, "std": std, "min": mean - 2 * std, "max": mean + 2 * std}


def random_features(image_size: int, cameras: tuple[str, ...], state_dim: int, action_dim: int,
                    seed: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """LeRobot's (input_features, output_features, dataset_stats) for Gauntlet's state, cameras at
    image_size px and action."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {STATE_FEATURE: PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))}
    for cam in cameras:
        inputs[image_feature(cam)] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, image_size, image_size))
    outputs = {ACTION_FEATURE: PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    stats = {STATE_FEATURE: _stats(state_dim, seed + 1), ACTION_FEATURE: _stats(action_dim, seed + 2)}
    for cam in cameras:
        stats[image_feature(cam)] = {
            "mean": torch.full((3, 1, 1), 0.45), "std": torch.full((3, 1, 1), 0.25),
            "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)}
    return inputs, outputs, stats


def save_random_policy(policy_type: str, out_dir: str, *, image_size: int = 32,
                       cameras: tuple[str, ...] = ("agentview", "wrist"), state_dim: int = STATE_DIM,
                       action_dim: int = ACTION_DIM, seed: int = 0, **overrides: Any) -> str:
    """Builds a random `policy_type` policy for (state_dim,) state, `cameras` at image_size px and
    (action_dim,) actions, and saves it with its processors into out_dir. Returns out_dir."""
    import torch
    from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors

    from gauntlet.policies.lerobot.vla_checkpoints import VLA_TYPES, save_random_vla

    if policy_type in VLA_TYPES:  # with a tokenizer (and VLM) written beside the weights
        return save_random_vla(policy_type, out_dir, image_size=image_size, cameras=cameras, state_dim=state_dim,
                               action_dim=action_dim, seed=seed, **overrides)["path"]
    torch.manual_seed(seed)
    inputs, outputs, stats = random_features(image_size, cameras, state_dim, action_dim, seed)
    kwargs = {**SMALL_OVERRIDES.get(policy_type, {}), **overrides}
    config = make_policy_config(policy_type, input_features=inputs, output_features=outputs, device="cpu", **kwargs)
    policy = get_policy_class(policy_type)(config)
    pre, post = make_pre_post_processors(config, dataset_stats=stats)
    policy.save_pretrained(out_dir)
    pre.save_pretrained(out_dir)
    post.save_pretrained(out_dir)
    return out_dir


def reference_actions(path: str, batch: dict[str, Any], noise_seed: int = 0) -> dict[str, Any]:
    """LeRobot's own inference path on `batch` (Gauntlet wire keys, leading dim B), written without the
    adapter: from_pretrained, the saved processors, `select_action` as lerobot-eval calls it on an
    episode's first step. Returns {"first": (B, D) the action select_action executes first,
    "chunk": (B, n_action_steps, D) from predict_action_chunk (ACT only: its call is stateless)}."""
    import numpy as np
    import torch
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    config = PreTrainedConfig.from_pretrained(path, local_files_only=True)
    policy = get_policy_class(config.type).from_pretrained(path, config=config, local_files_only=True)
    pre, post = make_pre_post_processors(config, pretrained_path=path)
    raw: dict[str, Any] = {STATE_FEATURE: torch.tensor(np.asarray(batch[STATE_KEY], np.float32))}
    for key in config.image_features:
        images = torch.tensor(np.asarray(batch[DATASET_CAMERAS[key.rsplit(".", 1)[-1]]]))
        raw[key] = images.permute(0, 3, 1, 2).float() / 255.0
    count = raw[STATE_FEATURE].shape[0]
    raw["task"] = [""] * count
    kwargs: dict[str, Any] = {}
    if config.type == "diffusion":
        gen = torch.Generator().manual_seed(noise_seed)
        kwargs["noise"] = torch.randn((config.horizon, config.output_features[ACTION_FEATURE].shape[0]),
                                      generator=gen).expand(count, -1, -1).contiguous()
    out: dict[str, Any] = {}
    with torch.inference_mode():
        policy.reset()
        out["first"] = post(policy.select_action(pre(dict(raw)), **kwargs)).numpy()
        if config.type == "act":
            policy.reset()
            chunk = policy.predict_action_chunk(pre(dict(raw)))[:, : config.n_action_steps]
            out["chunk"] = post(chunk).numpy()
    return out


def weights_problem(path: str, *, as_fallback: bool = False, streamed: bool = False) -> str:
    """The message of Gauntlet's weights check (weights_check.py), '' when it passes: on the replica's
    own loading path (LeRobotPolicy) for `path`; with as_fallback, on a freshly initialised model of
    `path`'s config, which is what lerobot 0.6.1's pi0/pi0.5 loader returns when it fails to load; with
    streamed, on such a model after `stream_weights` (the pi family's loading path) copied the file in."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    from gauntlet.policies.lerobot.config import LeRobotDirError
    from gauntlet.policies.lerobot.policy import LeRobotPolicy
    from gauntlet.policies.lerobot.weights_check import stream_weights, verify_loaded_weights

    try:
        if as_fallback or streamed:
            config = PreTrainedConfig.from_pretrained(path, local_files_only=True)
            model = get_policy_class(config.type)(config)
            if streamed:
                stream_weights(model, path)
            verify_loaded_weights(model, path)
        else:
            LeRobotPolicy(path)
    except LeRobotDirError as exc:
        return str(exc)
    return ""
