"""`qformer`: BLIP-2's querying transformer over each spot's spatial neighbourhood.

Each spot becomes a variable-length set of tokens: itself and its neighbours within a radius, each
token the sum of its expression and image projections plus its relative position. A few learned
query tokens cross-attend to that set and summarise it into the fused embedding. Spots at the slide's
edge have fewer neighbours; all spots still go through one batched forward, with a key padding mask
hiding the missing tokens (the benchmark compares this with a per-spot loop). Training reconstructs
the spot's own two modalities while its own token is often hidden, so the queries learn to read the
neighbourhood, which is what makes layer domains spatially coherent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gauntlet.fusion.methods.base import FusionConfig, LearnedFusionMethod, make_decoders, reconstruction_loss
from gauntlet.fusion.slide import SpotFeatures
from gauntlet.fusion.spatial_graph import neighbour_tokens

if TYPE_CHECKING:
    import torch


def make_qformer(n_genes: int, image_dim: int, config: FusionConfig) -> torch.nn.Module:
    """The Q-Former encoder: `embed_tokens` builds (B, L, d) tokens, `forward` pools them to (B, out)."""
    import torch
    from torch import nn

    d = config.hidden_dim

    class QFormer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_expression = nn.Linear(n_genes, d)
            self.embed_image = nn.Linear(image_dim, d)
            self.embed_offset = nn.Sequential(nn.Linear(2, d), nn.GELU(), nn.Linear(d, d))
            self.queries = nn.Parameter(0.02 * torch.randn(config.n_queries, d))
            self.cross = nn.MultiheadAttention(d, config.n_heads, batch_first=True)
            self.norm_cross = nn.LayerNorm(d)
            self.self_attn = nn.MultiheadAttention(d, config.n_heads, batch_first=True)
            self.norm_self = nn.LayerNorm(d)
            self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            self.norm_ff = nn.LayerNorm(d)
            self.out = nn.Linear(d, config.out_dim)

        def embed_tokens(self, expr, image, index, offset):
            """Per-spot features (N, G), (N, F) + neighbour index/offset (B, L), (B, L, 2) -> (B, L, d)."""
            per_spot = self.embed_expression(expr) + self.embed_image(image)  # (N, d), projected once
            return per_spot[index] + self.embed_offset(offset)  # (B, L, d)

        def forward(self, tokens, padding_mask=None):
            """(B, L, d) tokens, (B, L) True-where-padding -> (B, out_dim)."""
            q = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)  # (B, Q, d)
            attended, _ = self.cross(q, tokens, tokens, key_padding_mask=padding_mask, need_weights=False)
            q = self.norm_cross(q + attended)
            mixed, _ = self.self_attn(q, q, q, need_weights=False)
            q = self.norm_self(q + mixed)
            q = self.norm_ff(q + self.ff(q))
            return self.out(q.mean(dim=1))  # (B, out_dim)

    return QFormer()


class QFormerFusion(LearnedFusionMethod):
    name = "qformer"

    def build(self, expr, image, features: SpotFeatures, generator):
        import torch
        from torch import nn

        cfg = self.config
        device = expr.device
        index, padding, offset = neighbour_tokens(features.coords, cfg.token_radius_spacings, cfg.max_tokens)
        index = torch.as_tensor(index, device=device)
        padding = torch.as_tensor(padding, device=device)
        offset = torch.as_tensor(offset, device=device)
        encoder = make_qformer(expr.shape[1], image.shape[1], cfg)
        decoders = make_decoders(cfg.out_dim, expr.shape[1], image.shape[1], cfg.hidden_dim)
        model = nn.ModuleDict({"encoder": encoder, "decoders": decoders}).to(device)
        has_neighbours = (~padding[:, 1:]).any(dim=1)  # (N,) a lone spot must keep its own token

        def loss() -> torch.Tensor:
            n, length = padding.shape
            hide = torch.zeros_like(padding)
            hide[:, 0] = (torch.rand(n, device=device, generator=generator) < cfg.centre_token_dropout) & has_neighbours
            hide[:, 1:] = torch.rand(n, length - 1, device=device, generator=generator) < 0.1
            hidden = padding | hide
            hidden[:, 0] &= ~hidden.all(dim=1)  # never hide every token of a spot (attention -> NaN)
            z = encoder(encoder.embed_tokens(expr, image, index, offset), hidden)
            return reconstruction_loss(z, expr, image, decoders)

        def embed() -> torch.Tensor:
            return encoder(encoder.embed_tokens(expr, image, index, offset), padding)

        return model, loss, embed
