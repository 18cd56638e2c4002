"""`staig`: image-aided graph contrastive learning (after STAIG, Yang et al. 2024).

- Graph: the symmetric spatial kNN graph of the spots; node features are the expression.
- Augmentation: two views per epoch, each dropping edges with a probability that grows with the
  image-embedding distance between the edge's ends (adaptive edge dropout) and masking a random
  subset of expression features. Masks are drawn on the tensors' device.
- Encoder: two GCN layers (symmetric-normalised propagation with self-loops, via index_add over the
  edge list) and a projection head.
- Loss: GRACE-style InfoNCE between the views, with negatives debiased by image pseudo-labels:
  another spot whose image falls in the same KMeans cluster is likely the same tissue domain, so it
  is removed from the denominator instead of being pushed away.
The fused embedding is the encoder's output on the full, unaugmented graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gauntlet.fusion.methods.base import LearnedFusionMethod
from gauntlet.fusion.slide import SpotFeatures
from gauntlet.fusion.spatial_graph import image_edge_drop_probabilities, knn_edges

if TYPE_CHECKING:
    import torch


def gcn_propagate(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2 x for a (2, E) edge list and (N, D) node features."""
    import torch

    n = x.shape[0]
    loops = torch.arange(n, device=x.device)
    src = torch.cat([edges[0], loops])
    dst = torch.cat([edges[1], loops])
    degree = torch.zeros(n, device=x.device, dtype=x.dtype).index_add_(0, dst, torch.ones_like(dst, dtype=x.dtype))
    norm = degree[src].rsqrt() * degree[dst].rsqrt()  # (E + N,)
    return torch.zeros_like(x).index_add_(0, dst, x[src] * norm.unsqueeze(1))


def debiased_infonce(
    z1: torch.Tensor, z2: torch.Tensor, same_pseudo: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean InfoNCE of anchors in view 1 against view 2, over (N, D) L2-normalised embeddings.

    Denominator: the positive (same spot, other view) plus every other spot in both views except
    those sharing the anchor's image pseudo-label (`same_pseudo`, (N, N) bool, diagonal True).
    """
    import torch

    between = z1 @ z2.T / temperature  # (N, N)
    within = z1 @ z1.T / temperature  # (N, N)
    eye = torch.eye(z1.shape[0], dtype=torch.bool, device=z1.device)
    neg_inf = torch.finfo(z1.dtype).min
    # between-view: keep the positive (diagonal) and the non-pseudo-matching negatives
    between_masked = between.masked_fill(same_pseudo & ~eye, neg_inf)
    # within-view: the anchor itself is never a negative, nor are its pseudo-label mates
    within_masked = within.masked_fill(same_pseudo, neg_inf)
    denominator = torch.logsumexp(torch.cat([between_masked, within_masked], dim=1), dim=1)  # (N,)
    return (denominator - between.diagonal()).mean()


class Staig(LearnedFusionMethod):
    name = "staig"

    def build(self, expr, image, features: SpotFeatures, generator):
        import torch
        import torch.nn.functional as F
        from sklearn.cluster import KMeans
        from torch import nn

        cfg = self.config
        device = expr.device
        edges = torch.as_tensor(knn_edges(features.coords, cfg.knn), device=device)
        drop_p = image_edge_drop_probabilities(image, edges, cfg.edge_drop_min, cfg.edge_drop_max)  # (E,)
        # Pseudo-labels come from the image embedding alone (never from annotations); seeded.
        n_pseudo = min(cfg.n_pseudo_labels, features.n_spots)
        pseudo = KMeans(n_clusters=n_pseudo, n_init=3, random_state=int(generator.initial_seed()) % 2**31)
        pseudo_labels = torch.as_tensor(pseudo.fit_predict(np.asarray(features.image, dtype=np.float64)), device=device)
        same_pseudo = pseudo_labels.unsqueeze(0) == pseudo_labels.unsqueeze(1)  # (N, N)

        d = cfg.hidden_dim
        model = nn.ModuleDict(
            {
                "gcn1": nn.Linear(expr.shape[1], d),
                "act": nn.PReLU(d),
                "gcn2": nn.Linear(d, cfg.out_dim),
                "head": nn.Sequential(nn.Linear(cfg.out_dim, d), nn.ELU(), nn.Linear(d, cfg.out_dim)),
            }
        ).to(device)

        def encode(x: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
            h = model["act"](gcn_propagate(model["gcn1"](x), graph))
            return gcn_propagate(model["gcn2"](h), graph)  # (N, out_dim)

        def view() -> tuple[torch.Tensor, torch.Tensor]:
            keep_edge = torch.rand(drop_p.shape, device=device, generator=generator) >= drop_p  # (E,)
            keep_feature = torch.rand(expr.shape[1], device=device, generator=generator) >= cfg.feature_mask_rate
            return expr * keep_feature, edges[:, keep_edge]

        def loss() -> torch.Tensor:
            z1 = F.normalize(model["head"](encode(*view())), dim=1)
            z2 = F.normalize(model["head"](encode(*view())), dim=1)
            t = cfg.temperature
            return 0.5 * (debiased_infonce(z1, z2, same_pseudo, t) + debiased_infonce(z2, z1, same_pseudo, t))

        return model, loss, lambda: encode(expr, edges)
