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


def _cross_attend(model: torch.nn.Module, spots: torch.Tensor, index: torch.Tensor, offset: torch.Tensor,
                  padding_mask: torch.Tensor | None, heads: int) -> torch.Tensor:
    """The learned queries of `model` attending over each neighbourhood's tokens -> (B, Q, d).

    The queries are shared by every neighbourhood, so attention scores split into a per-spot part
    (scored once per spot, then gathered: H*Q numbers per token instead of a 2d-wide key) and a
    position part that is linear in the 2-d offset. Likewise the value of a token is value(spot) +
    W_off @ offset, so the position part of the output is W_off applied to the attention-weighted
    mean offset. Same function as attending over materialised (B, L, 2d) keys/values, at a fraction
    of the memory traffic.
    """
    import torch

    b, length = index.shape
    d = spots.shape[1]
    dh = d // heads
    flat = index.reshape(-1)  # (B*L,)
    q = model.to_q(model.queries).view(-1, heads, dh)  # (Q, H, dh)
    k_spot, v_spot = model.to_kv(spots).view(-1, 2, heads, dh).unbind(1)  # 2 x (N, H, dh)
    w_k, w_v = model.kv_offset.weight.view(2, heads, dh, 2).unbind(0)  # 2 x (H, dh, 2)
    scale = dh**-0.5
    s_spot = torch.einsum("nhe,qhe->nhq", k_spot, q) * scale  # (N, H, Q)
    q_off = torch.einsum("qhe,hec->hqc", q, w_k) * scale  # (H, Q, 2)
    scores = s_spot.index_select(0, flat).view(b, length, -1)  # (B, L, H*Q)
    scores = torch.baddbmm(scores, offset, q_off.permute(2, 0, 1).reshape(2, -1).expand(b, -1, -1))
    if padding_mask is not None:
        scores = scores.masked_fill(padding_mask[:, :, None], float("-inf"))
    p = torch.softmax(scores, dim=1)  # (B, L, H*Q): over each neighbourhood's tokens
    p = p.view(b, length, heads, -1).permute(0, 2, 3, 1)  # (B, H, Q, L)
    v_tok = v_spot.reshape(-1, d).index_select(0, flat).view(b, length, heads, dh).transpose(1, 2)  # (B, H, L, dh)
    attended = torch.matmul(p, v_tok)  # (B, H, Q, dh)
    mean_offset = torch.matmul(p.reshape(b, -1, length), offset).view(b, heads, -1, 2)  # (B, H, Q, 2)
    attended = attended + torch.einsum("bhqc,hec->bhqe", mean_offset, w_v)
    return model.cross_out(attended.transpose(1, 2).reshape(b, -1, d))  # (B, Q, d)


def make_qformer(n_genes: int, image_dim: int, config: FusionConfig) -> torch.nn.Module:
    """The Q-Former encoder: `embed_spots` (N, d) once per slide, `forward` pools neighbourhoods."""
    import torch
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
            attended = _cross_attend(self, spots, index, offset, padding_mask, heads)  # (B, Q, d)
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
