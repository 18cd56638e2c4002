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
    """The Q-Former encoder: `embed_spots` (N, d) once per slide, `forward` pools neighbourhoods."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    d = config.hidden_dim
    heads = config.n_heads

    class QFormer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_expression = nn.Linear(n_genes, d)
            self.embed_image = nn.Linear(image_dim, d)
            self.queries = nn.Parameter(0.02 * torch.randn(config.n_queries, d))
            self.to_q = nn.Linear(d, d)
            # A token is (spot embedding) + (position embedding), both linear, so its key/value is
            # kv(spot) + kv_offset(offset): each spot is projected once, then gathered into every
            # neighbourhood, instead of re-projecting ~L copies of it.
            self.to_kv = nn.Linear(d, 2 * d)
            self.kv_offset = nn.Linear(2, 2 * d, bias=False)
            self.cross_out = nn.Linear(d, d)
            self.norm_cross = nn.LayerNorm(d)
            self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.norm_self = nn.LayerNorm(d)
            self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            self.norm_ff = nn.LayerNorm(d)
            self.out = nn.Linear(d, config.out_dim)

        def embed_spots(self, expr, image):
            """(N, G), (N, F) -> (N, d) one embedding per spot."""
            return self.embed_expression(expr) + self.embed_image(image)

        def forward(self, spots, index, offset, padding_mask=None):
            """Spots (N, d); each row of index (B, L) lists one neighbourhood, offset (B, L, 2) its
            relative positions, padding_mask (B, L) True where there is no token -> (B, out_dim)."""
            b, length = index.shape
            dh = d // heads
            kv = self.to_kv(spots).index_select(0, index.reshape(-1)).view(b, length, 2 * d)  # (B, L, 2d)
            kv = kv + self.kv_offset(offset)
            k, v = kv.view(b, length, 2, heads, dh).permute(2, 0, 3, 1, 4)  # 2 x (B, H, L, dh)
            q = self.to_q(self.queries).view(1, -1, heads, dh).transpose(1, 2)  # (1, H, Q, dh), shared
            q = q.expand(b, -1, -1, -1)
            mask = None if padding_mask is None else (~padding_mask)[:, None, None, :]  # (B, 1, 1, L)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Q, dh)
            attended = self.cross_out(attended.transpose(1, 2).reshape(b, -1, d))  # (B, Q, d)
            h = self.norm_cross(self.queries + attended)
            mixed, _ = self.self_attn(h, h, h, need_weights=False)
            h = self.norm_self(h + mixed)
            h = self.norm_ff(h + self.ff(h))
            return self.out(h.mean(dim=1))  # (B, out_dim)

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
            z = encoder(encoder.embed_spots(expr, image), index, offset, hidden)
            return reconstruction_loss(z, expr, image, decoders)

        def embed() -> torch.Tensor:
            return encoder(encoder.embed_spots(expr, image), index, offset, padding)

        return model, loss, embed
