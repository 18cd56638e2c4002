"""BC-RNN configuration: one frozen dataclass (no torch here, so registries stay light)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gauntlet.data.normalization import NORM_MODES
from gauntlet.keys import ACTION_DIM, OBJECT_STATE_KEY, STATE_KEY
from gauntlet.policies.base import ModelConfig

LOSSES = ("mse",)  # a GMM head (robomimic's option) is not implemented: scripted demos are unimodal


@dataclass(frozen=True)
class BCRNNConfig(ModelConfig):
    """A robomimic-style BC-RNN over low-dimensional state, extended to return action chunks.

    Chunking: one `infer` call sees one observation and must return `chunk_len` actions. The LSTM is
    unrolled open-loop for those steps: every step is fed the same (held) observation plus a one-hot
    of its offset inside the chunk, and carries its own hidden state forward. Training uses exactly
    the same input construction (observations held for `chunk_len` steps from the window start), so
    what the network sees at rollout is what it was trained on. The alternative, predicting the whole
    chunk from one LSTM step, would throw away the recurrence that makes this a BC-RNN.

    `to_dict`, `architecture_dict`, `from_dict` and `replace` come from ModelConfig.
    """

    # The LRU size of served episodes changes neither the weights nor the function.
    non_architecture_fields: ClassVar[tuple[str, ...]] = ("max_episodes",)

    # --- observations ---
    obs_keys: tuple[str, ...] = (STATE_KEY, OBJECT_STATE_KEY)  # batch keys read, concatenated in order
    obs_dims: tuple[int, ...] = (8, 10)  # length of each key's vector (lift's object_state is 10)
    # --- actions ---
    action_dim: int = ACTION_DIM  # D: OSC delta pos (3) + delta axis-angle (3) + gripper
    chunk_len: int = 8  # H: actions returned per infer call (LSTM unrolled open-loop H steps)
    action_clip: float = 1.0  # returned actions are clipped to [-clip, clip] (the env's range); 0 = off
    # --- network ---
    hidden_size: int = 128  # LSTM hidden units (robomimic uses 400; tasks here are small)
    num_layers: int = 2  # stacked LSTM layers (robomimic's default)
    mlp_hidden: int = 128  # hidden width of the action head (0 = a single linear layer)
    loss: str = "mse"  # "mse" on normalised actions (see LOSSES)
    norm_mode: str = "zscore"  # how observations and actions are normalised: "zscore" or "quantile"
    # --- training / memory ---
    # Training windows of this many steps start from a zero hidden state; at rollout the per-episode
    # hidden state is reset every seq_len steps (as robomimic's rollout does) so the network never
    # runs on a longer memory than it was trained with. Must be a multiple of chunk_len.
    seq_len: int = 16
    # --- serving ---
    max_episodes: int = 4096  # hidden states kept (LRU, keyed by `episode_id`); oldest evicted

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs_keys", tuple(str(k) for k in self.obs_keys))
        object.__setattr__(self, "obs_dims", tuple(int(d) for d in self.obs_dims))
        if not self.obs_keys:
            raise ValueError("obs_keys: at least one observation key is required")
        if len(set(self.obs_keys)) != len(self.obs_keys):
            raise ValueError(f"obs_keys: duplicate keys in {self.obs_keys}")
        if len(self.obs_dims) != len(self.obs_keys):
            raise ValueError(f"obs_dims: {len(self.obs_dims)} dims for {len(self.obs_keys)} obs_keys")
        if any(d <= 0 for d in self.obs_dims):
            raise ValueError(f"obs_dims: must be positive, got {self.obs_dims}")
        for name in ("action_dim", "chunk_len", "hidden_size", "num_layers", "seq_len", "max_episodes"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.mlp_hidden < 0:
            raise ValueError(f"mlp_hidden: must be >= 0, got {self.mlp_hidden}")
        if self.action_clip < 0:
            raise ValueError(f"action_clip: must be >= 0, got {self.action_clip}")
        if self.seq_len % self.chunk_len:
            raise ValueError(f"seq_len: {self.seq_len} is not a multiple of chunk_len {self.chunk_len}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss: must be one of {LOSSES}, got {self.loss!r}")
        if self.norm_mode not in NORM_MODES:
            raise ValueError(f"norm_mode: must be one of {NORM_MODES}, got {self.norm_mode!r}")

    @property
    def obs_dim(self) -> int:
        """Width of the concatenated observation vector."""
        return sum(self.obs_dims)

    @property
    def input_dim(self) -> int:
        """LSTM input width: the observation plus a one-hot of the step's offset in its chunk."""
        return self.obs_dim + self.chunk_len

    @property
    def calls_per_memory(self) -> int:
        """Infer calls an episode's hidden state survives before it is reset (seq_len / chunk_len)."""
        return self.seq_len // self.chunk_len

    @property
    def privileged(self) -> bool:
        return OBJECT_STATE_KEY in self.obs_keys


def config_for_task(task: str, **overrides: Any) -> BCRNNConfig:
    """Default config with `observation/object_state` sized for `task` (see TaskSpec.object_state_dim)."""
    from gauntlet.envs.tasks import get_task

    if "obs_dims" not in overrides and tuple(overrides.get("obs_keys", BCRNNConfig.obs_keys)) == BCRNNConfig.obs_keys:
        overrides["obs_dims"] = (8, get_task(task).object_state_dim)
    return BCRNNConfig(**overrides)
