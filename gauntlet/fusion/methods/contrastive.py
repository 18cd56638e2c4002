"""`basic_contrastive`: CLIP-style alignment of an expression encoder and an image encoder.

Spot i's expression and image are a positive pair, every other spot's image a negative. What the two
modalities share (here: the tissue layer) is what survives the alignment; modality-specific nuisance
is discarded. The fused embedding is both L2-normalised embeddings side by side.
"""

from __future__ import annotations

from gauntlet.fusion.methods.base import LearnedFusionMethod
from gauntlet.fusion.slide import SpotFeatures


def clip_loss(z_a, z_b, temperature: float):
    """Symmetric InfoNCE over (N, D) L2-normalised embeddings; positives on the diagonal."""
    import torch
    import torch.nn.functional as F

    logits = z_a @ z_b.T / temperature  # (N, N)
    target = torch.arange(z_a.shape[0], device=z_a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class BasicContrastive(LearnedFusionMethod):
    name = "basic_contrastive"

    def build(self, expr, image, features: SpotFeatures, generator):
        import torch
        import torch.nn.functional as F
        from torch import nn

        cfg = self.config

        def encoder(width: int) -> nn.Module:
            return nn.Sequential(
                nn.Linear(width, cfg.hidden_dim), nn.LayerNorm(cfg.hidden_dim), nn.GELU(),
                nn.Linear(cfg.hidden_dim, cfg.out_dim),
            )

        model = nn.ModuleDict({"expression": encoder(expr.shape[1]), "image": encoder(image.shape[1])})
        model.to(expr.device)

        def embed_pair() -> tuple[torch.Tensor, torch.Tensor]:
            return F.normalize(model["expression"](expr), dim=1), F.normalize(model["image"](image), dim=1)

        def loss() -> torch.Tensor:
            # Feature dropout on both inputs: without it the encoders memorise each spot's noise
            # (a few hundred spots, hundreds of dims) instead of aligning on shared structure.
            keep_e = torch.rand(expr.shape, device=expr.device, generator=generator) >= cfg.input_dropout
            keep_i = torch.rand(image.shape, device=expr.device, generator=generator) >= cfg.input_dropout
            z_e = F.normalize(model["expression"](expr * keep_e), dim=1)
            z_i = F.normalize(model["image"](image * keep_i), dim=1)
            return clip_loss(z_e, z_i, cfg.temperature)

        return model, loss, lambda: torch.cat(embed_pair(), dim=1)  # (N, 2 * out_dim)
