"""Fusion methods by name (the one registry style, `gauntlet.runtime.registry`). Entries name their
class as "module:attribute" and are imported only when asked for (they import torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gauntlet.runtime.registry import Registry, import_object

if TYPE_CHECKING:
    from gauntlet.fusion.methods.base import FusionConfig, FusionMethod

# the names are what `--methods` accepts and what result tables show
METHODS: Registry[str] = Registry("fusion method")
for _name, _path in (
    ("concat", "gauntlet.fusion.methods.parameter_free:Concat"),
    ("mean", "gauntlet.fusion.methods.parameter_free:Mean"),
    ("element_wise_sum", "gauntlet.fusion.methods.parameter_free:ElementWiseSum"),
    ("attention", "gauntlet.fusion.methods.attention:Attention"),
    ("basic_contrastive", "gauntlet.fusion.methods.contrastive:BasicContrastive"),
    ("adaln_attention", "gauntlet.fusion.methods.attention:AdaLNAttention"),
    ("llava_mlp", "gauntlet.fusion.methods.llava_mlp:LlavaMLP"),
    ("qformer", "gauntlet.fusion.methods.qformer:QFormerFusion"),
    ("staig", "gauntlet.fusion.methods.staig:Staig"),
):
    METHODS.register(_name, _path)
METHOD_NAMES: tuple[str, ...] = METHODS.names()


def make_method(name: str, config: FusionConfig | None = None) -> FusionMethod:
    """The fusion method called `name`, configured by `config` (defaults when None); an unknown name is
    an `UnknownNameError` listing the known ones."""
    return import_object(METHODS.lookup(name))(config)
