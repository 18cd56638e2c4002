"""VLA model inputs from a raw batch: the one place requests are checked and normalised.

Serving (`infer`) and training (`prepare_train_batch`) both go through `model_inputs`, so a model is
trained on exactly the inputs it is later asked about. Nothing here imports JAX.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gauntlet.data.normalization import NormStats
from gauntlet.keys import ACTION_IS_PAD_KEY, ACTIONS_KEY, IMAGE_KEY, PROMPT_KEY, STATE_KEY, WRIST_IMAGE_KEY
from gauntlet.policies.tokenizer import ByteTokenizer
from gauntlet.policies.validation import ObservationError
from gauntlet.policies.vla.config import VLAConfig

NOISE_SEED_KEY = "noise_seed"  # optional (B,) ints in a batch: vary the sampling noise per request


def model_inputs(config: VLAConfig, tokenizer: ByteTokenizer, batch: Mapping[str, Any], stats: NormStats,
                 with_actions: bool = False) -> dict[str, np.ndarray]:
    """Raw batch -> model inputs (NumPy): images (B, C, S, S, 3) uint8, tokens/token_mask (B, L),
    state (B, Ds) normalised, noise_seed (B,) int32, and with_actions: actions (B, H, D) normalised
    plus action_mask (B, H) when the batch carries `action_is_pad`. ObservationError names a bad key."""
    c = config
    if STATE_KEY not in batch:
        raise ObservationError(STATE_KEY, "missing")
    state = np.asarray(batch[STATE_KEY], dtype=np.float32)
    if state.ndim != 2 or state.shape[1] != c.state_dim:
        raise ObservationError(STATE_KEY, f"expected shape (B, {c.state_dim}), got {list(state.shape)}")
    if not np.all(np.isfinite(state)):
        raise ObservationError(STATE_KEY, "contains NaN or inf")
    b = state.shape[0]
    cams = [IMAGE_KEY, WRIST_IMAGE_KEY][: c.num_cameras]
    images = []
    for key in cams:
        if key not in batch:
            raise ObservationError(key, "missing")
        img = np.asarray(batch[key])
        expected = (b, c.image_size, c.image_size, 3)
        if img.shape != expected:
            # No resizing here: a silent resize would hide a client rendering at the wrong size.
            raise ObservationError(key, f"expected shape {list(expected)} (uint8), got {list(img.shape)}")
        if img.dtype != np.uint8:
            if img.dtype.kind not in "iu" or (img.size and (img.min() < 0 or img.max() > 255)):
                raise ObservationError(key, f"expected uint8 pixels, got dtype {img.dtype}")
            img = img.astype(np.uint8)
        images.append(img)
    if PROMPT_KEY not in batch:
        raise ObservationError(PROMPT_KEY, "missing")
    prompts = np.asarray(batch[PROMPT_KEY])
    if prompts.ndim == 0:
        prompts = np.full((b,), str(prompts.item()))
    if prompts.shape != (b,):
        raise ObservationError(PROMPT_KEY, f"expected {b} prompts, got shape {list(prompts.shape)}")
    tokens, token_mask = tokenizer.encode_batch(prompts)
    noise_seed = np.asarray(batch.get(NOISE_SEED_KEY, np.zeros((b,))), dtype=np.int64).reshape(-1)
    if noise_seed.shape != (b,):
        raise ObservationError(NOISE_SEED_KEY, f"expected {b} ints, got shape {list(noise_seed.shape)}")
    out = {
        "images": np.stack(images, axis=1),  # (B, C, S, S, 3)
        "tokens": tokens,
        "token_mask": token_mask,
        "state": stats.normalize(STATE_KEY, state, c.norm_mode).astype(np.float32),
        "noise_seed": noise_seed,
    }
    if with_actions:
        actions = np.asarray(batch[ACTIONS_KEY], dtype=np.float32)
        if actions.shape != (b, c.chunk_len, c.action_dim):
            raise ObservationError(ACTIONS_KEY, f"expected shape {[b, c.chunk_len, c.action_dim]}, got {list(actions.shape)}")
        out[ACTIONS_KEY] = stats.normalize(ACTIONS_KEY, actions, c.norm_mode).astype(np.float32)
        if ACTION_IS_PAD_KEY in batch:
            is_pad = np.asarray(batch[ACTION_IS_PAD_KEY], dtype=bool)
            if is_pad.shape != (b, c.chunk_len):
                raise ObservationError(ACTION_IS_PAD_KEY, f"expected shape {[b, c.chunk_len]}, got {list(is_pad.shape)}")
            out["action_mask"] = ~is_pad
    return out

