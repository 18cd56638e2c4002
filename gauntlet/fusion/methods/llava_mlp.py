"""`llava_mlp`: the LLaVA-1.5 connector (two-layer GELU MLP) mapping image features into the
expression token space, fused with the expression token by a small MLP encoder.

LLaVA projects a frozen vision encoder's output into the language model's embedding space with this
MLP; here the "language" side is expression. Trained to reconstruct both modalities.
"""

from __future__ import annotations

from gauntlet.fusion.methods.base import LearnedFusionMethod, make_decoders, reconstruction_loss
from gauntlet.fusion.slide import SpotFeatures


class LlavaMLP(LearnedFusionMethod):
    name = "llava_mlp"

    def build(self, expr, image, features: SpotFeatures, generator):
        import torch
        from torch import nn

        cfg = self.config
        d = cfg.hidden_dim
        model = nn.ModuleDict(
            {
                "expression_token": nn.Linear(expr.shape[1], d),
                # mlp2x_gelu, LLaVA-1.5's projector
                "projector": nn.Sequential(nn.Linear(image.shape[1], d), nn.GELU(), nn.Linear(d, d)),
                "fuse": nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, cfg.out_dim)),
                "decoders": make_decoders(cfg.out_dim, expr.shape[1], image.shape[1], d),
            }
        ).to(expr.device)

        def embed() -> torch.Tensor:
            tokens = torch.cat([model["expression_token"](expr), model["projector"](image)], dim=1)  # (N, 2d)
            return model["fuse"](tokens)

        def loss() -> torch.Tensor:
            return reconstruction_loss(embed(), expr, image, model["decoders"])

        return model, loss, embed
