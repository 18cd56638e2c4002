"""BC-RNN training windows (NumPy only), which `gauntlet train --policy bc_rnn` draws in the one worker loop.

Batches are windows of `seq_len` steps starting anywhere in an episode (robomimic's sampling),
padded past the episode's end with its last step and masked out of the loss (the policy's
`train_loss`). Inside a window the observation is held for `chunk_len` steps from the window start,
exactly as `infer` holds a call's observation over its chunk, so training and rollout feed the LSTM
the same kind of input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gauntlet.keys import ACTION_IS_PAD_KEY, ACTIONS_KEY
from gauntlet.policies.bc_rnn.config import BCRNNConfig


def _episode_arrays(ep: Mapping[str, np.ndarray], keys: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """An episode {obs key: (T, d), "actions": (T, D)} -> ([(T, d)], (T, D))."""
    actions = np.asarray(ep[ACTIONS_KEY], dtype=np.float32)
    missing = [k for k in keys if k not in ep]
    if missing:
        raise KeyError(f"episode lacks observation key {missing[0]!r} (has {sorted(ep)})")
    obs = [np.asarray(ep[k], dtype=np.float32) for k in keys]
    if any(o.shape[0] != actions.shape[0] for o in obs):
        raise ValueError(f"episode observations and actions differ in length ({[o.shape for o in obs]} vs {actions.shape})")
    return obs, actions


class SequenceSampler:
    """Random training windows over episodes, in dataset units, built with NumPy indexing.

    sample(n, rng) -> {obs key: (n, seq_len, dim) the held observation of each step,
    "actions": (n, seq_len, D), "action_is_pad": (n, seq_len) True past the episode's end}; the
    policy's `prepare_train_batch` normalises it into LSTM inputs.

    `episode_weights` (one per episode, e.g. `gauntlet train --recovery-fraction`'s) are the episodes'
    draw probabilities, normalised here; None draws every step equally likely as a window start.
    """

    def __init__(self, episodes: Sequence[Mapping[str, np.ndarray]], config: BCRNNConfig,
                 rng: np.random.Generator, episode_weights: Sequence[float] | np.ndarray | None = None):
        self.config = config
        self.rng = rng  # used when `sample` is given none
        if episode_weights is not None and len(episode_weights) != len(episodes):
            raise ValueError(f"episode_weights: {len(episode_weights)} weights for {len(episodes)} episodes")
        obs_parts: dict[str, list[np.ndarray]] = {k: [] for k in config.obs_keys}
        act_parts, lengths, kept = [], [], []
        for i, ep in enumerate(episodes):
            obs, actions = _episode_arrays(ep, config.obs_keys)
            if actions.shape[0] == 0:
                continue
            kept.append(i)
            for key, o in zip(config.obs_keys, obs, strict=True):
                obs_parts[key].append(o)
            act_parts.append(actions)
            lengths.append(actions.shape[0])
        if not lengths:
            raise ValueError("episodes: no steps to train on")
        self.obs = {k: np.concatenate(v) for k, v in obs_parts.items()}  # key -> (N, dim)
        self.actions = np.concatenate(act_parts)  # (N, D)
        self.lengths = np.asarray(lengths)  # (E,)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])  # (E,) offset of each episode
        weights = self.lengths if episode_weights is None else np.asarray(episode_weights, dtype=np.float64)[kept]
        if not (np.all(np.isfinite(weights)) and np.all(weights >= 0) and weights.sum() > 0):
            raise ValueError("episode_weights: must be finite, non-negative and not all zero")
        self.episode_p = weights / weights.sum()  # (E,) each episode's draw probability
        h = config.chunk_len
        self._offsets = np.arange(config.seq_len)  # (L,)
        self._held = (self._offsets // h) * h  # (L,) the step whose observation each step sees

    def sample(self, n: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        rng = rng if rng is not None else self.rng
        ep = rng.choice(len(self.lengths), size=n, p=self.episode_p)  # (n,)
        t0 = (rng.random(n) * self.lengths[ep]).astype(np.int64)  # (n,) window start in [0, T)
        last = self.lengths[ep, None] - 1  # (n, 1)
        steps = t0[:, None] + self._offsets[None]  # (n, L)
        act_idx = self.starts[ep, None] + np.minimum(steps, last)
        obs_idx = self.starts[ep, None] + np.minimum(t0[:, None] + self._held[None], last)
        out = {k: v[obs_idx] for k, v in self.obs.items()}
        out[ACTIONS_KEY] = self.actions[act_idx]
        out[ACTION_IS_PAD_KEY] = steps > last  # padding past the end is not learnt
        return out

