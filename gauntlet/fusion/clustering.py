"""Clustering fused embeddings into the slide's number of layers.

Two clusterers, as in the spatial-domain literature: KMeans, and a Gaussian mixture with one
covariance matrix shared by all components (`covariance_type="tied"`), the Python counterpart of
mclust's EEE model that STAGATE/STAIG use. The mixture runs on the leading principal components:
a tied covariance over a 64-dim embedding of a few thousand spots is poorly conditioned, and mclust
pipelines likewise cluster ~20-30 PCs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

from gauntlet.fusion.errors import FusionError, NonFiniteEmbeddingError
from gauntlet.fusion.refine import pca

CLUSTERERS = ("kmeans", "gmm_eee")
GMM_MAX_DIMS = 20  # principal components the tied-covariance mixture sees


class ClusteringError(FusionError):
    """The clusterer could not fit (e.g. a degenerate embedding); reported, not crashed on."""


def check_finite(embedding: np.ndarray, what: str) -> None:
    """Raises NonFiniteEmbeddingError naming `what` if any value is NaN/inf."""
    bad = ~np.isfinite(embedding)
    if bad.any():
        rows = int(bad.any(axis=1).sum()) if embedding.ndim == 2 else int(bad.sum())
        raise NonFiniteEmbeddingError(
            f"{what}: embedding has {int(bad.sum())} NaN/inf values in {rows} of {embedding.shape[0]} spots"
        )


def cluster(
    embedding: np.ndarray, n_clusters: int, method: Literal["kmeans", "gmm_eee"], seed: int, what: str = "embedding"
) -> np.ndarray:
    """(N, D) embedding -> (N,) cluster ids in [0, n_clusters). `what` names it in errors."""
    if embedding.ndim != 2:
        raise ClusteringError(f"{what}: expected an (N, D) embedding, got shape {embedding.shape}")
    check_finite(embedding, what)
    if n_clusters < 2 or n_clusters > embedding.shape[0]:
        raise ClusteringError(f"{what}: cannot make {n_clusters} clusters of {embedding.shape[0]} spots")
    x = embedding.astype(np.float64)
    try:
        if method == "kmeans":
            return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(x)
        if method == "gmm_eee":
            reduced = pca(x, GMM_MAX_DIMS).astype(np.float64)
            # several k-means-initialised restarts: one EM run often stalls in a merged-layer optimum
            gmm = GaussianMixture(
                n_components=n_clusters, covariance_type="tied", reg_covar=1e-5, n_init=10, random_state=seed
            )
            return gmm.fit_predict(reduced)
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise ClusteringError(f"{what}: {method} failed ({exc})") from exc
    raise ValueError(f"unknown clusterer {method!r}; choose from {CLUSTERERS}")
