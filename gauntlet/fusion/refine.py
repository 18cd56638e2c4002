"""The optional `refine` step: PCA of each modality to a chosen width before fusion.

Raw expression has hundreds of standardised genes, most of them noise for layer structure; keeping
the leading principal components denoises it and puts both modalities at the same width. The sweep
compares every method with and without it (the "refine delta").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gauntlet.fusion.slide import SpotFeatures


def pca(features: np.ndarray, dim: int) -> np.ndarray:
    """(N, D) -> (N, min(dim, N, D)) float32 principal-component scores (deterministic full SVD)."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=0)
    width = min(dim, *x.shape)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:width].T).astype(np.float32)  # (N, D) @ (D, width)


def refine(features: SpotFeatures, dim: int) -> SpotFeatures:
    """Both modalities reduced to `dim` principal components (unsupervised, per slide)."""
    if dim < 1:
        raise ValueError(f"refine dim must be >= 1, got {dim}")
    return dataclasses.replace(features, expression=pca(features.expression, dim), image=pca(features.image, dim))
