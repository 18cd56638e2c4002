"""BC-RNN training data and a small in-process loop: scripted-expert demos -> sequence windows -> Adam.

`collect_demos` needs only the simulator (no torch, no images); `fit` imports torch. Batches are
windows of `seq_len` steps starting anywhere in an episode (robomimic's sampling), padded past the
episode's end with its last step and masked out of the loss (the policy's `train_loss`). `gauntlet
train --policy bc_rnn` draws the same windows (`SequenceSampler`) in the platform's shared loop. Inside a window the observation is
held for `chunk_len` steps from the window start, exactly as `infer` holds a call's observation
over its chunk, so training and rollout feed the LSTM the same kind of input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.data.normalization import NormStats
from gauntlet.keys import ACTION_IS_PAD_KEY, ACTIONS_KEY, OBJECT_STATE_KEY, STATE_KEY
from gauntlet.policies.bc_rnn.config import BCRNNConfig

if TYPE_CHECKING:
    from gauntlet.policies.bc_rnn.policy import BCRNNPolicy


@dataclass(frozen=True)
class DemoEpisode:
    """One demonstration: what the expert saw before each step and what it did."""

    observations: dict[str, np.ndarray]  # obs key -> (T, dim) float32, the observation before step t
    actions: np.ndarray  # (T, D) float32, the action taken at step t
    success: bool  # whether the task was solved by the last step
    seed: int  # env reset seed (and expert seed)

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def collect_demos(task: str, variant: str = "D0", episodes: int = 5, seed: int = 0, *, horizon: int = 300,
                  only_success: bool = True, max_attempts: int | None = None) -> list[DemoEpisode]:
    """Roll out the scripted expert on seeds seed, seed+1, ... (state only, no rendering).

    only_success: failed rollouts are dropped and further seeds tried, up to `max_attempts`
    (default 2 * episodes) rollouts; fewer demos than asked for raise RuntimeError.
    """
    from gauntlet.envs.env import make_env
    from gauntlet.envs.experts import make_expert

    if episodes <= 0:
        raise ValueError(f"episodes: must be positive, got {episodes}")
    attempts = max_attempts if max_attempts is not None else 2 * episodes
    env = make_env(task, variant, cameras=())
    demos: list[DemoEpisode] = []
    try:
        for k in range(attempts):
            if len(demos) == episodes:
                break
            ep_seed = seed + k
            env.reset(ep_seed)
            expert = make_expert(env, seed=ep_seed)
            obs: dict[str, list[np.ndarray]] = {STATE_KEY: [], OBJECT_STATE_KEY: []}
            actions: list[np.ndarray] = []
            success = env.success()
            while not success and len(actions) < horizon:
                o = env.observe(images=False)
                obs[STATE_KEY].append(o[STATE_KEY])
                obs[OBJECT_STATE_KEY].append(o[OBJECT_STATE_KEY])
                action = expert.act()
                actions.append(action)
                success = env.step(action)
            if not actions or (only_success and not success):
                continue
            demos.append(DemoEpisode(
                observations={k_: np.stack(v).astype(np.float32) for k_, v in obs.items()},
                actions=np.stack(actions).astype(np.float32), success=bool(success), seed=ep_seed,
            ))
    finally:
        env.close()
    if len(demos) < episodes:
        raise RuntimeError(f"collected {len(demos)} of {episodes} demos for {task}/{variant} in {attempts} attempts")
    return demos


def _episode_arrays(ep: DemoEpisode | Mapping[str, np.ndarray], keys: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """An episode as DemoEpisode or {obs key: (T, d), "actions": (T, D)} -> ([(T, d)], (T, D))."""
    obs_map = ep.observations if isinstance(ep, DemoEpisode) else ep
    actions = np.asarray(ep.actions if isinstance(ep, DemoEpisode) else ep[ACTIONS_KEY], dtype=np.float32)
    missing = [k for k in keys if k not in obs_map]
    if missing:
        raise KeyError(f"episode lacks observation key {missing[0]!r} (has {sorted(obs_map)})")
    obs = [np.asarray(obs_map[k], dtype=np.float32) for k in keys]
    if any(o.shape[0] != actions.shape[0] for o in obs):
        raise ValueError(f"episode observations and actions differ in length ({[o.shape for o in obs]} vs {actions.shape})")
    return obs, actions


def compute_norm_stats(episodes: Sequence[DemoEpisode | Mapping[str, np.ndarray]], config: BCRNNConfig) -> NormStats:
    """Per-key statistics over every step of every episode (observation keys + `actions`)."""
    per_key: dict[str, list[np.ndarray]] = {k: [] for k in (*config.obs_keys, ACTIONS_KEY)}
    for ep in episodes:
        obs, actions = _episode_arrays(ep, config.obs_keys)
        for k, o in zip(config.obs_keys, obs, strict=True):
            per_key[k].append(o)
        per_key[ACTIONS_KEY].append(actions)
    return NormStats.compute({k: np.concatenate(v) for k, v in per_key.items()})


class SequenceSampler:
    """Random training windows over episodes, in dataset units, built with NumPy indexing.

    sample(n, rng) -> {obs key: (n, seq_len, dim) the held observation of each step,
    "actions": (n, seq_len, D), "action_is_pad": (n, seq_len) True past the episode's end}; the
    policy's `prepare_train_batch` normalises it into LSTM inputs.
    """

    def __init__(self, episodes: Sequence[DemoEpisode | Mapping[str, np.ndarray]], config: BCRNNConfig,
                 rng: np.random.Generator):
        self.config = config
        self.rng = rng  # used when `sample` is given none
        obs_parts: dict[str, list[np.ndarray]] = {k: [] for k in config.obs_keys}
        act_parts, lengths = [], []
        for ep in episodes:
            obs, actions = _episode_arrays(ep, config.obs_keys)
            if actions.shape[0] == 0:
                continue
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
        self.step_weights = self.lengths / self.lengths.sum()  # every step equally likely as a window start
        h = config.chunk_len
        self._offsets = np.arange(config.seq_len)  # (L,)
        self._held = (self._offsets // h) * h  # (L,) the step whose observation each step sees

    def sample(self, n: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        rng = rng if rng is not None else self.rng
        ep = rng.choice(len(self.lengths), size=n, p=self.step_weights)  # (n,)
        t0 = (rng.random(n) * self.lengths[ep]).astype(np.int64)  # (n,) window start in [0, T)
        last = self.lengths[ep, None] - 1  # (n, 1)
        steps = t0[:, None] + self._offsets[None]  # (n, L)
        act_idx = self.starts[ep, None] + np.minimum(steps, last)
        obs_idx = self.starts[ep, None] + np.minimum(t0[:, None] + self._held[None], last)
        out = {k: v[obs_idx] for k, v in self.obs.items()}
        out[ACTIONS_KEY] = self.actions[act_idx]
        out[ACTION_IS_PAD_KEY] = steps > last  # padding past the end is not learnt
        return out


def fit(policy_or_config: BCRNNPolicy | BCRNNConfig, episodes: Sequence[DemoEpisode | Mapping[str, np.ndarray]],
        steps: int = 500, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, *,
        norm_stats: NormStats | None = None, grad_clip: float = 1.0, weight_decay: float = 0.0,
        progress: bool = False, **create_kwargs: Any) -> tuple[BCRNNPolicy, list[float]]:
    """Train a BC-RNN by behaviour cloning; returns the policy and the loss of every step.

    policy_or_config: a config starts a fresh policy (initialised from `seed`); a policy is trained
    in place. Norm stats: `norm_stats` if given, else the policy's own if it already has data
    statistics (fine-tuning keeps its input scale), else computed from `episodes`.
    """
    import torch

    from gauntlet.policies.bc_rnn.policy import BCRNNPolicy

    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps and batch_size: must be positive, got {steps}, {batch_size}")
    if isinstance(policy_or_config, BCRNNConfig):
        policy = BCRNNPolicy.create(policy_or_config, seed=seed, **create_kwargs)
    else:
        if create_kwargs:
            raise TypeError(f"{sorted(create_kwargs)[0]}: create options apply only when fitting from a config")
        policy = policy_or_config
    config = policy.config
    if norm_stats is not None:
        policy.set_norm_stats(norm_stats)
    elif not policy.has_data_stats:
        policy.set_norm_stats(compute_norm_stats(episodes, config))
    sampler = SequenceSampler(episodes, config, np.random.default_rng(seed))

    model = policy.model
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    meter = None
    if progress:
        from gauntlet.runtime.progress import Progress

        meter = Progress(steps, "bc_rnn fit", unit="steps")
    losses: list[float] = []
    model.train()
    try:
        for _ in range(steps):
            x = policy.prepare_train_batch(sampler.sample(batch_size), sampler.rng)
            # From a zero hidden state, as at a memory reset.
            loss = policy.train_loss(model, {k: torch.from_numpy(v) for k, v in x.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            if meter is not None:
                meter.update(1, extra=f"loss {losses[-1]:.4f}")
    finally:
        model.eval()
        policy.reset()  # hidden states from before training belong to another function
    return policy, losses
