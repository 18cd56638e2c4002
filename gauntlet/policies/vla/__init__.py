"""A compact pi0-style VLA in JAX/Flax with LoRA adapters.

Importing this package (and `config`, `inputs`, `executables`) does not import JAX; `VLAPolicy`
(and everything under `model`, `lora`, `train`, `policy`) does, on first use, so
registries can list the VLA without paying for JAX.
"""

from __future__ import annotations

from typing import Any

from gauntlet.policies.vla.config import PRESETS, VLAConfig, get_config

__all__ = ["PRESETS", "VLAConfig", "get_config", "VLAPolicy", "VLAAdapterView", "AdapterNotFoundError"]

_LAZY = {"VLAPolicy": "policy", "VLAAdapterView": "loaded_adapters", "AdapterNotFoundError": "loaded_adapters"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"gauntlet.policies.vla.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
