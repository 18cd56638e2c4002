"""Spatial neighbourhoods of spots, built with vectorised array operations only.

- `knn_edges`: the symmetric k-nearest-neighbour graph used by graph methods (staig).
- `neighbour_tokens`: for each spot, the indices of the spots within a radius (itself first), padded
  to a fixed length with a mask, so a whole slide goes through attention in one batched forward.
- `image_edge_drop_probabilities`: per-edge drop probability from image-embedding distance (staig's
  adaptive augmentation), one gather and one norm over all edges at once.
`benchmarks/bench_fusion_speed.py` measures the last one against a Python double loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    import torch


def median_spacing(coords: np.ndarray) -> float:
    """Median distance from a spot to its nearest other spot (the grid pitch on Visium)."""
    dist, _ = cKDTree(coords).query(coords, k=2)
    spacing = float(np.median(dist[:, 1]))
    return spacing if spacing > 0 else 1.0


def knn_edges(coords: np.ndarray, k: int) -> np.ndarray:
    """(2, E) int64 directed edges of the symmetrised kNN graph, without self-loops or duplicates."""
    n = coords.shape[0]
    k = min(k, n - 1)
    _, idx = cKDTree(coords).query(coords, k=k + 1)  # (N, k+1), column 0 is (usually) the spot itself
    src = np.repeat(np.arange(n), k + 1)
    dst = idx.reshape(-1)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    both = np.concatenate([src * n + dst, dst * n + src])  # each undirected edge in both directions
    unique = np.unique(both)
    return np.stack([unique // n, unique % n]).astype(np.int64)


def neighbour_tokens(
    coords: np.ndarray, radius_spacings: float, max_tokens: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of each spot's neighbours within `radius_spacings` grid pitches, nearest first.

    Returns (index (N, L) int64, padding (N, L) bool True where no neighbour, offset (N, L, 2) float32
    neighbour position relative to the spot in grid pitches). Padded slots index spot 0 (harmless:
    masked out) so the array can be used for gathering directly.
    """
    n = coords.shape[0]
    spacing = median_spacing(coords)
    length = min(max_tokens, n)
    dist, idx = cKDTree(coords).query(coords, k=length, distance_upper_bound=radius_spacings * spacing * (1 + 1e-6))
    idx = idx.reshape(n, length)
    padding = ~np.isfinite(dist.reshape(n, length))  # missing neighbours come back as inf / index n
    idx = np.where(padding, 0, idx).astype(np.int64)
    offset = (coords[idx] - coords[:, None, :]) / spacing  # (N, L, 2)
    offset[padding] = 0.0
    return idx, padding, offset.astype(np.float32)


def image_edge_distances(image: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(E,) Euclidean distance between the image embeddings at both ends of each edge."""
    import torch

    # index_select, not image[edges[0]]: on CPU it is several times faster than advanced indexing
    diff = image.index_select(0, edges[0])
    diff.sub_(image.index_select(0, edges[1]))  # in place: one (E, F) buffer instead of three
    return torch.linalg.vector_norm(diff, dim=1)


def image_edge_drop_probabilities(
    image: torch.Tensor, edges: torch.Tensor, p_min: float, p_max: float
) -> torch.Tensor:
    """(E,) drop probability per edge, rising linearly with image distance from p_min to p_max.

    Edges between spots that look alike are kept more often: they likely join the same tissue
    domain, while edges across a visible boundary are the ones an augmentation should perturb.
    """
    dist = image_edge_distances(image, edges)
    span = (dist.max() - dist.min()).clamp_min(1e-12)
    return p_min + (p_max - p_min) * (dist - dist.min()) / span
