"""The BC-RNN network (torch): LSTM over [normalised observation, chunk-offset one-hot] -> action.

Everything here works in normalised units; `policy.py` owns normalisation and the hidden-state
bookkeeping and the training loss (`train_loss`), `train.py` the training windows and `fit`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gauntlet.policies.bc_rnn.config import BCRNNConfig

HiddenState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, B, hidden_size)


class BCRNN(nn.Module):
    def __init__(self, config: BCRNNConfig):
        super().__init__()
        self.config = config
        c = config
        self.lstm = nn.LSTM(c.input_dim, c.hidden_size, num_layers=c.num_layers, batch_first=True)
        if c.mlp_hidden:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(c.hidden_size, c.mlp_hidden), nn.ReLU(), nn.Linear(c.mlp_hidden, c.action_dim)
            )
        else:
            self.head = nn.Linear(c.hidden_size, c.action_dim)

    def zero_state(self, batch_size: int) -> HiddenState:
        c = self.config
        shape = (c.num_layers, batch_size, c.hidden_size)
        return torch.zeros(shape), torch.zeros(shape)

    def forward(self, inputs: torch.Tensor, state: HiddenState | None = None) -> tuple[torch.Tensor, HiddenState]:
        """inputs (B, T, input_dim), state (h, c) or None (zeros) -> actions (B, T, D), new state."""
        out, new_state = self.lstm(inputs, state)  # out (B, T, hidden_size)
        return self.head(out), new_state

    def chunk(self, obs: torch.Tensor, state: HiddenState | None = None) -> tuple[torch.Tensor, HiddenState]:
        """One observation per row, unrolled open-loop: obs (B, obs_dim) -> actions (B, H, D), state."""
        return self.forward(chunk_inputs(obs, self.config.chunk_len), state)


def offset_one_hot(offsets: np.ndarray | torch.Tensor, chunk_len: int) -> torch.Tensor:
    """Step offsets inside a chunk (any shape, ints in [0, H)) -> one-hot float32 (..., H)."""
    idx = torch.as_tensor(np.asarray(offsets), dtype=torch.long)
    return nn.functional.one_hot(idx, chunk_len).to(torch.float32)


def chunk_inputs(obs: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """obs (B, obs_dim) -> LSTM inputs (B, H, obs_dim + H): the observation held for H steps."""
    b = obs.shape[0]
    held = obs[:, None, :].expand(b, chunk_len, obs.shape[1])
    onehot = offset_one_hot(np.arange(chunk_len), chunk_len)[None].expand(b, chunk_len, chunk_len)
    return torch.cat([held, onehot], dim=-1)


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """Parameters as float32 NumPy arrays keyed by torch's dotted names (checkpoint params)."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


def param_shapes(config: BCRNNConfig) -> dict[str, tuple[int, ...]]:
    """The parameter shapes a checkpoint of `config` must hold (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = BCRNN(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_model(config: BCRNNConfig, seed: int = 0, params: dict[str, np.ndarray] | None = None) -> BCRNN:
    """A model initialised from `seed` (deterministic, without touching the global torch RNG) or
    loaded from `params` (exact: strict, every key and shape must match)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = BCRNN(config)
    if params is not None:
        model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in params.items()}, strict=True)
    model.eval()
    return model
