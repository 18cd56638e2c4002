"""Attention fusion: `attention` (self-attention over modality tokens) and `adaln_attention`.

Both are trained to reconstruct both modalities from the fused embedding. `attention` sees one token
per modality and, in training, randomly hides one of them through the key padding mask, so the
embedding must carry what the two modalities share. `adaln_attention` splits expression into tokens
and lets the image steer every block through adaptive LayerNorm (shift, scale and a zero-initialised
gate predicted from the image, as in DiT), so the image conditions how expression is read rather
than being mixed in as one more token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gauntlet.fusion.methods.base import LearnedFusionMethod, make_decoders, reconstruction_loss
from gauntlet.fusion.slide import SpotFeatures

if TYPE_CHECKING:
    import torch


def masked_mean(tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, D) tokens, (B, L) True-where-padding -> (B, D) mean over the real tokens."""
    if padding_mask is None:
        return tokens.mean(dim=1)
    keep = (~padding_mask).unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
    return (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)


def _modality_tokens_module(n_genes: int, image_dim: int, config) -> torch.nn.Module:
    import torch
    from torch import nn

    d = config.hidden_dim

    class ModalityTokenAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_expression = nn.Linear(n_genes, d)
            self.embed_image = nn.Linear(image_dim, d)
            self.modality = nn.Parameter(0.02 * torch.randn(2, d))
            self.attn = nn.MultiheadAttention(d, config.n_heads, batch_first=True)
            self.norm1 = nn.LayerNorm(d)
            self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            self.norm2 = nn.LayerNorm(d)
            self.out = nn.Linear(d, config.out_dim)

        def forward(self, expr, image, padding_mask=None):
            tokens = torch.stack([self.embed_expression(expr), self.embed_image(image)], dim=1)  # (N, 2, d)
            tokens = tokens + self.modality
            attended, _ = self.attn(tokens, tokens, tokens, key_padding_mask=padding_mask, need_weights=False)
            h = self.norm1(tokens + attended)
            h = self.norm2(h + self.ff(h))
            return self.out(masked_mean(h, padding_mask))  # (N, out_dim)

    return ModalityTokenAttention()


class Attention(LearnedFusionMethod):
    name = "attention"

    def build(self, expr, image, features: SpotFeatures, generator):
        import torch
        from torch import nn

        cfg = self.config
        encoder = _modality_tokens_module(expr.shape[1], image.shape[1], cfg)
        decoders = make_decoders(cfg.out_dim, expr.shape[1], image.shape[1], cfg.hidden_dim)
        model = nn.ModuleDict({"encoder": encoder, "decoders": decoders}).to(expr.device)
        n = expr.shape[0]

        def loss() -> torch.Tensor:
            # Hide at most one modality per spot: an all-padding row would make attention NaN.
            r = torch.rand(n, device=expr.device, generator=generator)
            p = cfg.modality_dropout
            padding = torch.stack([r < p / 2, (r >= p / 2) & (r < p)], dim=1)  # (N, 2)
            z = encoder(expr, image, padding)
            return reconstruction_loss(z, expr, image, decoders)

        return model, loss, lambda: encoder(expr, image, None)


def _adaln_module(n_genes: int, image_dim: int, config, n_tokens: int) -> torch.nn.Module:
    import torch
    from torch import nn

    d = config.hidden_dim

    class AdaLNBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
            self.attn = nn.MultiheadAttention(d, config.n_heads, batch_first=True)
            self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
            self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            self.modulation = nn.Sequential(nn.GELU(), nn.Linear(d, 6 * d))
            # adaLN-Zero: the block starts as the identity and learns how much the image matters
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)

        def forward(self, x, cond, padding_mask=None):
            # cond (B, d) -> six (B, 1, d) modulation vectors
            shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).unsqueeze(1).chunk(6, dim=-1)
            h = self.norm1(x) * (1 + scale1) + shift1
            attended, _ = self.attn(h, h, h, key_padding_mask=padding_mask, need_weights=False)
            x = x + gate1 * attended
            h = self.norm2(x) * (1 + scale2) + shift2
            return x + gate2 * self.ff(h)

    class AdaLNAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_expression = nn.Linear(n_genes, n_tokens * d)
            self.position = nn.Parameter(0.02 * torch.randn(n_tokens, d))
            self.embed_image = nn.Sequential(nn.Linear(image_dim, d), nn.GELU(), nn.Linear(d, d))
            self.blocks = nn.ModuleList([AdaLNBlock(), AdaLNBlock()])
            self.out = nn.Linear(2 * d, config.out_dim)

        def forward(self, expr, image, padding_mask=None):
            tokens = self.embed_expression(expr).view(expr.shape[0], n_tokens, d) + self.position  # (N, T, d)
            cond = self.embed_image(image)  # (N, d)
            for block in self.blocks:
                tokens = block(tokens, cond, padding_mask)
            return self.out(torch.cat([masked_mean(tokens, padding_mask), cond], dim=1))  # (N, out_dim)

    return AdaLNAttention()


class AdaLNAttention(LearnedFusionMethod):
    name = "adaln_attention"
    n_expression_tokens = 4  # expression is read as this many learned "views" of the gene vector

    def build(self, expr, image, features: SpotFeatures, generator):
        import torch
        from torch import nn

        cfg = self.config
        t = self.n_expression_tokens
        encoder = _adaln_module(expr.shape[1], image.shape[1], cfg, t)
        decoders = make_decoders(cfg.out_dim, expr.shape[1], image.shape[1], cfg.hidden_dim)
        model = nn.ModuleDict({"encoder": encoder, "decoders": decoders}).to(expr.device)
        n = expr.shape[0]

        def loss() -> torch.Tensor:
            padding = torch.rand(n, t, device=expr.device, generator=generator) < cfg.modality_dropout  # (N, T)
            padding[:, 0] &= ~padding.all(dim=1)  # keep one token where all would be hidden
            z = encoder(expr, image, padding)
            return reconstruction_loss(z, expr, image, decoders)

        return model, loss, lambda: encoder(expr, image, None)
