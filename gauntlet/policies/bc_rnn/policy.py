"""BCRNNPolicy: a robomimic-style LSTM policy on low-dimensional (privileged) state, behind the
Policy protocol.

- Raw in, raw out: observations are normalised and actions unnormalised inside `infer` with the
  policy's NormStats (one entry per observation key, plus `actions`); actions are clipped to the
  env's range.
- Chunks: each call returns `chunk_len` actions; the LSTM is unrolled open-loop over the chunk with
  the call's observation held (see BCRNNConfig). The hidden state assumes the client executes the
  whole chunk before asking again, which is how Gauntlet's rollout actors use chunks.
- Recurrent state per episode (an extension of the design's Policy contract): one replica serves
  batches mixing many episodes, so it cannot hold "the" hidden state. A batch may carry an optional
  `episode_id` key, a (B,) str array. Rows with an id continue that episode's hidden state (kept in
  a bounded LRU dict, `max_episodes` entries, the least recently used evicted first) and store the
  new one; rows without one (key absent, or "") start from a zero state and store nothing, i.e. the
  policy is then stateless. One id may appear at most once per batch. As in robomimic's rollouts an
  episode's state is reset to zero every `seq_len` steps (`seq_len / chunk_len` calls), the longest
  memory the network was trained with. `reset()` forgets every episode, `end_episode(id)` one.
  Clients should use a fresh id per episode (e.g. f"{run}/{scene}/{trial}"). Each answer says, per
  row, how many calls of its episode this policy has answered (`episode_calls`, 0 without an id): a
  client whose own count differs knows the memory was lost (evicted, or another/restarted replica).
- Checkpoints: the pickle-free format of gauntlet.policies.checkpoints (torch state_dict tensors as
  float32 arrays in params.npz, read with allow_pickle=False; config.json; norm_stats.json).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gauntlet.data.normalization import FieldStats, NormStats, NormStatsError
from gauntlet.keys import ACTION_IS_PAD_KEY, ACTIONS_KEY, EPISODE_CALLS_KEY
from gauntlet.policies.base import FieldSpec, PolicyMetadata, masked_chunk_mse
from gauntlet.policies.bc_rnn.config import BCRNNConfig, config_for_task
from gauntlet.policies.bc_rnn.model import BCRNN, build_model, param_shapes, state_dict_numpy
from gauntlet.policies.checkpoints import (
    NORM_STATS_FILE,
    CheckpointFormatError,
    CheckpointMismatchError,
    fingerprint,
    load_model_checkpoint,
    save_checkpoint,
)
from gauntlet.policies.episode_store import EpisodeStore
from gauntlet.policies.validation import ObservationError, episode_ids

MODEL_NAME = "bc_rnn"


@dataclass
class _EpisodeMemory:
    h: torch.Tensor  # (num_layers, hidden_size)
    c: torch.Tensor  # (num_layers, hidden_size)
    calls: int  # infer calls since the state was last zeroed
    seen: int  # infer calls of this episode answered in all (what `episode_calls` reports)


def identity_norm_stats(config: BCRNNConfig) -> NormStats:
    """Stats that leave inputs and outputs (almost) unchanged: for untrained policies."""
    fields = {k: FieldStats.identity(d) for k, d in zip(config.obs_keys, config.obs_dims, strict=True)}
    fields[ACTIONS_KEY] = FieldStats.identity(config.action_dim)
    return NormStats(fields)


class BCRNNPolicy:
    def __init__(self, config: BCRNNConfig, model: BCRNN, norm_stats: NormStats | None = None, *,
                 name: str = MODEL_NAME, version: str | None = None):
        self.config = config
        self.model = model
        self.has_data_stats = norm_stats is not None  # False: identity stats, `fit` computes real ones
        self.norm_stats = norm_stats if norm_stats is not None else identity_norm_stats(config)
        self.norm_stats.check_dims(self._stat_dims())
        self._name = name
        self._version = version or "0"
        self._episodes: EpisodeStore[_EpisodeMemory] = EpisodeStore(config.max_episodes)
        self.metadata = self._make_metadata()

    # ---------------------------------------------------------------- construction

    @classmethod
    def create(cls, config: BCRNNConfig | None = None, *, task: str | None = None, seed: int = 0,
               norm_stats: NormStats | None = None, name: str = MODEL_NAME, **config_overrides: Any) -> BCRNNPolicy:
        """A randomly initialised policy. `task` sizes `observation/object_state` for that task;
        `config_overrides` replace config fields."""
        if config is None:
            config = config_for_task(task, **config_overrides) if task else BCRNNConfig(**config_overrides)
        elif config_overrides:
            config = config.replace(**config_overrides)
        return cls(config, build_model(config, seed), norm_stats, name=name)

    @classmethod
    def load(cls, checkpoint_dir: str | Path, *, name: str = MODEL_NAME) -> BCRNNPolicy:
        """A checkpoint written by `save`; every file is validated (errors name the file)."""
        checkpoint_dir = Path(checkpoint_dir)
        config, ckpt = load_model_checkpoint(checkpoint_dir, BCRNNConfig.from_dict, param_shapes, model=MODEL_NAME)
        if ckpt.norm_stats is None:
            raise CheckpointFormatError(checkpoint_dir / NORM_STATS_FILE, "missing: a BC-RNN checkpoint needs its statistics")
        try:
            ckpt.norm_stats.check_dims(_stat_dims(config))
        except NormStatsError as exc:
            raise CheckpointMismatchError(checkpoint_dir / NORM_STATS_FILE, exc.message) from None
        model = build_model(config, params=ckpt.params)
        return cls(config, model, ckpt.norm_stats, name=name, version=ckpt.extra.get("version"))

    def save(self, checkpoint_dir: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
        """Write config, params and norm stats as a checkpoint directory (atomically)."""
        params = self.params()
        return save_checkpoint(
            checkpoint_dir, kind="base", model_config=self.config.to_dict(), params=params,
            norm_stats=self.norm_stats, fingerprint_value=fingerprint(self.config.architecture_dict(), params),
            extra={**dict(extra or {}), "model": MODEL_NAME, "name": self._name, "version": self._version},
        )

    def params(self) -> dict[str, np.ndarray]:
        """Parameters as float32 NumPy arrays keyed by torch's names."""
        return state_dict_numpy(self.model)

    @property
    def fingerprint(self) -> str:
        """Digest of architecture + current weights (changes when training changes a weight)."""
        return fingerprint(self.config.architecture_dict(), self.params())

    def set_norm_stats(self, norm_stats: NormStats) -> None:
        norm_stats.check_dims(self._stat_dims())
        self.norm_stats = norm_stats
        self.has_data_stats = True

    def set_version(self, version: str) -> None:
        self._version = str(version)
        self.metadata = self._make_metadata()

    # ---------------------------------------------------------------- inference

    def normalize_observations(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Raw batch -> (B, obs_dim) float32 normalised observation; ObservationError names a bad key."""
        c = self.config
        parts = []
        b: int | None = None
        for key, dim in zip(c.obs_keys, c.obs_dims, strict=True):
            if key not in batch:
                raise ObservationError(key, f"missing (required keys: {list(c.obs_keys)})")
            try:
                arr = np.asarray(batch[key], dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise ObservationError(key, f"not a float array ({exc})") from None
            if arr.ndim != 2 or arr.shape[1] != dim or (b is not None and arr.shape[0] != b):
                want = f"({b if b is not None else 'B'}, {dim})"
                raise ObservationError(key, f"expected shape {want}, got {list(arr.shape)}")
            if not np.all(np.isfinite(arr)):
                raise ObservationError(key, "contains NaN or inf")
            b = arr.shape[0]
            parts.append(self.norm_stats.normalize(key, arr, c.norm_mode))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _gather(self, ids: list[str], b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, c), each (num_layers, B, hidden): stored state for known ids, zeros otherwise."""
        h, c = self.model.zero_state(b)
        for i, eid in enumerate(ids):
            mem = self._episodes.get(eid)
            if mem is not None and mem.calls < self.config.calls_per_memory:
                h[:, i], c[:, i] = mem.h, mem.c
        return h, c

    def _scatter(self, ids: list[str], h: torch.Tensor, c: torch.Tensor) -> list[int]:
        """Stores the new state of each named row; returns each row's `episode_calls` (0: no id)."""
        seen = [0] * len(ids)
        for i, eid in enumerate(ids):
            if not eid:
                continue
            old = self._episodes.get(eid)
            calls = 1 if old is None or old.calls >= self.config.calls_per_memory else old.calls + 1
            seen[i] = 1 if old is None else old.seen + 1
            self._episodes.put(eid, _EpisodeMemory(h[:, i].clone(), c[:, i].clone(), calls, seen[i]))
        return seen

    def infer(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Raw batch (B leading; optional `episode_id` (B,) str) -> {"actions": (B, H, D) float32,
        "episode_calls": (B,) int64}."""
        c = self.config
        obs = self.normalize_observations(batch)  # (B, obs_dim)
        b = obs.shape[0]
        ids = episode_ids(batch, b)  # all "" without the column: nothing is kept
        if b == 0:
            return {ACTIONS_KEY: np.zeros((0, c.chunk_len, c.action_dim), np.float32),
                    EPISODE_CALLS_KEY: np.zeros(0, np.int64)}
        with self._episodes.lock, torch.inference_mode():
            state = self._gather(ids, b)
            normed, (h, cell) = self.model.chunk(torch.from_numpy(obs), state)  # (B, H, D)
            seen = self._scatter(ids, h, cell)
        actions = self.norm_stats.unnormalize(ACTIONS_KEY, normed.numpy(), c.norm_mode)
        if c.action_clip:
            actions = np.clip(actions, -c.action_clip, c.action_clip)
        return {ACTIONS_KEY: actions.astype(np.float32), EPISODE_CALLS_KEY: np.asarray(seen, np.int64)}

    def reset(self) -> None:
        """Forgets every episode's hidden state."""
        self._episodes.reset()

    def end_episode(self, episode_id: str) -> None:
        """Forgets one episode's hidden state (frees its LRU slot early)."""
        self._episodes.end_episode(episode_id)

    @property
    def num_episodes(self) -> int:
        """Episodes whose hidden state is held."""
        return len(self._episodes)

    # ---------------------------------------------------------------- training (TrainablePolicy)

    def train_weights(self, mode: str, seed: int) -> BCRNN:
        """The module a trainer updates: every weight (a BC-RNN has no adapters; the training recipe
        refuses --mode lora before this is asked)."""
        del mode, seed
        return self.model

    def prepare_train_batch(self, batch: Mapping[str, Any], rng: np.random.Generator | int,
                            norm_stats: NormStats | None = None) -> dict[str, np.ndarray]:
        """Raw windows (`SequenceSampler.sample`) -> inputs (n, L, obs_dim + H): the normalised held
        observation and the chunk-offset one-hot, exactly as `infer` builds them; targets (n, L, D)
        normalised actions; valid (n, L) 1.0 for real steps. `rng` is unused: the window draw was
        the random part."""
        del rng
        c = self.config
        stats = norm_stats or self.norm_stats
        obs = np.concatenate([stats.normalize(k, np.asarray(batch[k], np.float32), c.norm_mode) for k in c.obs_keys],
                             axis=-1).astype(np.float32)  # (n, L, obs_dim)
        n, length = obs.shape[:2]
        onehot = np.eye(c.chunk_len, dtype=np.float32)[np.arange(length) % c.chunk_len]  # (L, H)
        inputs = np.concatenate([obs, np.broadcast_to(onehot, (n, length, c.chunk_len))], axis=-1)
        targets = stats.normalize(ACTIONS_KEY, batch[ACTIONS_KEY], c.norm_mode).astype(np.float32)
        valid = (~np.asarray(batch[ACTION_IS_PAD_KEY], dtype=bool)).astype(np.float32)
        return {"inputs": inputs, "targets": targets, "valid": valid}

    def train_loss(self, weights: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Masked MSE on normalised actions; `weights` is the module (DDP-wrapped or not), run from a
        zero hidden state as at a memory reset."""
        pred, _ = weights(batch["inputs"])  # (n, L, D)
        return masked_chunk_mse(pred, batch["targets"], batch["valid"])

    # ---------------------------------------------------------------- metadata

    def _stat_dims(self) -> dict[str, int]:
        return _stat_dims(self.config)

    def _make_metadata(self) -> PolicyMetadata:
        c = self.config
        spec = {k: FieldSpec((d,), "float32") for k, d in zip(c.obs_keys, c.obs_dims, strict=True)}
        return PolicyMetadata(
            name=self._name, version=self._version, action_dim=c.action_dim, chunk_len=c.chunk_len,
            observation_spec=spec, needs_images=False, privileged=c.privileged, episode_memory=True,
            extra={
                "model": MODEL_NAME, "hidden_size": c.hidden_size, "num_layers": c.num_layers,
                "norm_mode": c.norm_mode, "recurrent": True, "memory_steps": c.seq_len,
                "max_episodes": c.max_episodes,
            },
        )


def _stat_dims(config: BCRNNConfig) -> dict[str, int]:
    dims = dict(zip(config.obs_keys, config.obs_dims, strict=True))
    dims[ACTIONS_KEY] = config.action_dim
    return dims
