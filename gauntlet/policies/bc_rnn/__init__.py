"""BC-RNN: a robomimic-style LSTM policy over low-dimensional state (torch).

Importing this package does not import torch; `BCRNNPolicy` and the rest of `policy` and `model`
do, on first use, so registries can list the policy without paying for torch. It trains through
`gauntlet train --policy bc_rnn` (its windows: `windows.SequenceSampler`).
"""

from __future__ import annotations

from typing import Any

from gauntlet.policies.bc_rnn.config import BCRNNConfig, config_for_task

__all__ = ["BCRNNConfig", "config_for_task", "BCRNNPolicy", "EPISODE_ID_KEY"]

_LAZY = {"BCRNNPolicy": "policy", "EPISODE_ID_KEY": "policy"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"gauntlet.policies.bc_rnn.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
