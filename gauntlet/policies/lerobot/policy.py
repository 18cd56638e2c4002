"""A LeRobot pretrained policy as a Gauntlet Policy: one batched call per batch.

Runs where LeRobot is importable: inside a LeRobot replica's runtime environment (environment.py),
never in Gauntlet's own process. Per batch:

    wire keys (B, ...) NumPy  --to_lerobot-->  LeRobot's raw batch (observation.state (B, 8) float32,
    observation.images.<cam> (B, 3, H, W) float in [0, 1], task: list[str])
    --policy_preprocessor (saved with the policy: normalise, tokenize, device)-->
    one batched model call  --policy_postprocessor (unnormalise, to CPU)-->  (B, H, D) NumPy

LeRobot's `select_action` keeps an action queue per policy *instance* (one episode at a time); a
batched replica serves many episodes. Where that queue is all the state (ACT without temporal
ensembling, Diffusion with n_obs_steps 1, pi0/pi0.5/SmolVLA), the adapter calls the chunk-level entry
point (`predict_action_chunk`) on a freshly reset policy for every batch and returns `n_action_steps`
actions per request, the part of the chunk `select_action` would execute before asking again.
Policies whose `select_action` keeps more (spec.episode_state: Diffusion's observation history, ACT's
temporal ensemble) keep it per `episode_id` and answer one action per env step (episode_state.py).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from gauntlet.keys import ACTIONS_KEY, EPISODE_CALLS_KEY, PROMPT_KEY, STATE_KEY
from gauntlet.policies.base import PolicyMetadata
from gauntlet.policies.lerobot.config import (
    FLOW_TYPES,
    LEROBOT_ACTION,
    LEROBOT_IMAGES_PREFIX,
    LEROBOT_STATE,
    LEROBOT_TASK,
    LeRobotAdapterConfig,
    PretrainedSpec,
    read_pretrained,
)
from gauntlet.policies.lerobot.environment import TORCH_THREADS_ENV
from gauntlet.policies.lerobot.episode_state import EpisodeStepper
from gauntlet.policies.lerobot.release_check import check_config
from gauntlet.policies.lerobot.weights_check import stream_weights, verify_loaded_weights
from gauntlet.policies.validation import episode_ids


def to_lerobot(batch: dict[str, Any], spec: PretrainedSpec, adapter: LeRobotAdapterConfig) -> dict[str, Any]:
    """Gauntlet's wire batch -> LeRobot's raw observation batch, as LeRobot's env wrappers build it
    (lerobot.envs.utils.preprocess_observation: channel-first float images in [0, 1], `task` strings)."""
    import torch

    out: dict[str, Any] = {LEROBOT_STATE: torch.as_tensor(np.asarray(batch[STATE_KEY], np.float32))}
    for cam in spec.cameras:
        images = torch.as_tensor(np.ascontiguousarray(batch[adapter.cameras[cam]]))  # (B, H, W, 3) uint8
        out[LEROBOT_IMAGES_PREFIX + cam] = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    prompts = batch.get(PROMPT_KEY)
    count = out[LEROBOT_STATE].shape[0]
    out[LEROBOT_TASK] = [str(p) for p in prompts] if prompts is not None else [""] * count
    return out


class LeRobotPolicy:
    """Gauntlet's Policy contract over a LeRobot `PreTrainedPolicy` and its saved processors."""

    def __init__(self, path: str, adapter: LeRobotAdapterConfig | None = None):
        import torch
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import make_pre_post_processors

        torch.set_num_threads(int(os.environ.get(TORCH_THREADS_ENV, "1")))
        self.adapter = adapter or LeRobotAdapterConfig()
        self.spec = read_pretrained(path, self.adapter)  # refuses a misfit before loading weights
        check_config(self.spec.path)  # and a config.json this LeRobot release cannot read, naming the field
        config = PreTrainedConfig.from_pretrained(self.spec.path, local_files_only=True)
        config.device = self.adapter.device
        self.model = load_model(config, self.spec.path)
        verify_loaded_weights(self.model, self.spec.path)  # LeRobot's loaders can leave weights random silently
        self.model.eval()
        device_override = {"device_processor": {"device": self.adapter.device}}
        self.preprocess, self.postprocess = make_pre_post_processors(
            config, pretrained_path=self.spec.path, preprocessor_overrides=device_override)
        self.config = config
        self.metadata: PolicyMetadata = self.spec.metadata(self.adapter)
        # select_action's state per episode, for the policies that keep more than an action queue.
        self.episodes = EpisodeStepper(self.model, self.adapter.max_episodes, self.noise) \
            if self.spec.episode_state else None

    def reset(self) -> None:
        """Forgets every episode's state (a stateless policy holds none: each batch starts from a reset
        LeRobot policy)."""
        if self.episodes is not None:
            self.episodes.store.reset()

    def infer(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Wire batch (B leading) -> {"actions": (B, chunk_len, D) float32}; a stateful policy also
        answers {"episode_calls": (B,) int64} and takes an optional `episode_id` (B,) str column."""
        import torch

        raw = to_lerobot(batch, self.spec, self.adapter)
        if self.episodes is not None:
            ids = episode_ids(batch, len(raw[LEROBOT_TASK]))  # before any work: a bad column fails alone
            with torch.inference_mode():
                actions, calls = self.episodes.step(self.preprocess(raw), ids, self.postprocess)  # (B, D)
            return {ACTIONS_KEY: actions[:, None].detach().to("cpu", torch.float32).numpy(),  # (B, 1, D)
                    EPISODE_CALLS_KEY: np.asarray(calls, np.int64)}
        with torch.inference_mode():
            model_in = self.preprocess(raw)
            chunk = self._predict_chunk(model_in, len(raw[LEROBOT_TASK]))
            actions = self.postprocess(chunk)
        actions = actions[:, : self.spec.chunk_len].detach().to("cpu", torch.float32).numpy()
        return {ACTIONS_KEY: actions}

    def _predict_chunk(self, batch: dict[str, Any], count: int) -> Any:
        """One batched model call: (B, >= n_action_steps, D) normalised actions."""
        self.model.reset()  # queues sized for another batch (or episode) must not leak in
        if self.spec.policy_type == "diffusion":
            return self._diffusion_chunk(batch, count)
        if self.spec.policy_type in FLOW_TYPES:  # each request's flow starts from the same seeded noise
            return self.model.predict_action_chunk(batch, noise=self.noise(count))
        return self.model.predict_action_chunk(batch)

    def _diffusion_chunk(self, batch: dict[str, Any], count: int) -> Any:
        """Diffusion's chunk call reads its observation queues (n_obs_steps deep): fill them with the
        current observation, as `select_action` does on an episode's first step, and draw the initial
        noise per request from `noise_seed` so an answer does not depend on its batch-mates."""
        import torch
        from lerobot.policies.utils import populate_queues
        from lerobot.utils.constants import ACTION, OBS_IMAGES

        # The preprocessor's batch carries `action: None`; it must not enter the action queue.
        batch = {k: v for k, v in batch.items() if k != ACTION}
        if self.config.image_features:
            batch[OBS_IMAGES] = torch.stack([batch[key] for key in self.config.image_features], dim=-4)
        self.model._queues = populate_queues(self.model._queues, batch)
        return self.model.predict_action_chunk(batch, noise=self.noise(count))

    def noise(self, count: int) -> Any:
        """(count, steps, dim) initial noise drawn from `noise_seed`: the same draw for every request."""
        return initial_noise(self.config, count, self.adapter.noise_seed).to(self.adapter.device)


def load_model(config: Any, path: str) -> Any:
    """The LeRobot policy saved at `path`, built without its random initialisation where the file fills
    every tensor (initialisation_skipped). pi0/pi0.5 (their classes carry openpi's key fix-ups) get
    their weights streamed in (weights_check.stream_weights), exactly as their own `from_pretrained`
    maps them but without holding the whole file in memory; every other type loads through LeRobot's
    own `from_pretrained`."""
    from lerobot.policies.factory import get_policy_class

    policy_class = get_policy_class(config.type)
    with initialisation_skipped(config.type):
        if not hasattr(policy_class, "_fix_pytorch_state_dict_keys"):
            return policy_class.from_pretrained(path, config=config, local_files_only=True)
        model = policy_class(config)  # what their from_pretrained builds before reading the file
    stream_weights(model, path)
    return model


def initialisation_skipped(policy_type: str) -> contextlib.AbstractContextManager:
    """For the transformers-backed families, builds the model without its random initialisation before
    the file fills it: a 4.0 B pi0 loaded by LeRobot's own loader took 18 s instead of 148 s on 2 cores
    (docs/benchmarks.md), every parameter and buffer equal to the default path's.
    Safe because nothing may stay unfilled: verify_loaded_weights refuses a model tensor the file does
    not fill. transformers < 5 (lerobot 0.4.x's environments) keeps the default path."""
    if policy_type not in FLOW_TYPES:
        return contextlib.nullcontext()
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def initial_noise(config: Any, count: int, seed: int) -> Any:
    """The start of a LeRobot policy's denoising, one draw repeated for `count` requests: Diffusion's
    (count, horizon, action_dim); the flow-matching families' (count, chunk_size, max_action_dim)
    float32, the shape and dtype their own `sample_noise` draws (`noise` argument of predict_action_chunk)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    if config.type == "diffusion":
        shape = (config.horizon, config.output_features[LEROBOT_ACTION].shape[0])
    else:
        shape = (config.chunk_size, config.max_action_dim)
    return torch.randn(shape, generator=generator, dtype=torch.float32).expand(count, -1, -1).contiguous()
