"""Fusion methods by name. Implementations are imported only when asked for (they import torch)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gauntlet.fusion.methods.base import FusionConfig, FusionMethod

# name -> "module:class"; the names are what `--methods` accepts and what result tables show
METHODS: dict[str, str] = {
    "concat": "gauntlet.fusion.methods.parameter_free:Concat",
    "mean": "gauntlet.fusion.methods.parameter_free:Mean",
    "element_wise_sum": "gauntlet.fusion.methods.parameter_free:ElementWiseSum",
    "attention": "gauntlet.fusion.methods.attention:Attention",
    "basic_contrastive": "gauntlet.fusion.methods.contrastive:BasicContrastive",
    "adaln_attention": "gauntlet.fusion.methods.attention:AdaLNAttention",
    "llava_mlp": "gauntlet.fusion.methods.llava_mlp:LlavaMLP",
    "qformer": "gauntlet.fusion.methods.qformer:QFormerFusion",
    "staig": "gauntlet.fusion.methods.staig:Staig",
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def make_method(name: str, config: FusionConfig | None = None) -> FusionMethod:
    """The fusion method called `name`, configured by `config` (defaults when None)."""
    if name not in METHODS:
        raise ValueError(f"unknown fusion method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)(config)
