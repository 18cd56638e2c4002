"""Expression preprocessing shared by `.h5ad` slides and synthetic ones.

Both sources go through the same steps (library-size normalisation, log1p, most-variable genes,
per-gene standardisation, as scanpy's standard recipe does), so a method sees the same kind of input
whatever the slide came from and the synthetic benchmark stays representative of real data.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

TARGET_LIBRARY_SIZE = 1e4  # counts per spot after normalisation (scanpy's conventional target_sum)
SCALE_CLIP = 10.0  # standardised values are clipped here, as scanpy.pp.scale(max_value=10) does


def prepare_expression(matrix: np.ndarray | sp.spmatrix, max_genes: int) -> np.ndarray:
    """(N, G) counts (dense or sparse) -> (N, min(G', max_genes)) float32 standardised log-expression.

    Non-negative input is treated as counts and normalised; input with negative values is taken to be
    already transformed and only standardised. Genes with zero variance are dropped: they carry no
    information and would divide by zero.
    """
    if max_genes < 1:
        raise ValueError(f"max_genes must be >= 1, got {max_genes}")
    is_sparse = sp.issparse(matrix)
    x = sp.csr_matrix(matrix, dtype=np.float64) if is_sparse else np.asarray(matrix, dtype=np.float64)
    min_value = x.min() if x.shape[0] * x.shape[1] else 0.0
    if min_value >= 0:
        library = np.asarray(x.sum(axis=1)).ravel()
        # an empty spot stays all-zero instead of dividing by zero
        scale = TARGET_LIBRARY_SIZE / np.maximum(library, 1.0)
        if is_sparse:
            x = sp.diags(scale) @ x
            x = x.log1p()
        else:
            x = np.log1p(x * scale[:, None])
    if is_sparse:
        mean = np.asarray(x.mean(axis=0)).ravel()
        var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - mean**2
    else:
        mean = x.mean(axis=0)
        var = x.var(axis=0)
    informative = np.flatnonzero(var > 1e-12)
    keep = informative[np.argsort(-var[informative], kind="stable")[:max_genes]]
    keep.sort()
    dense = x[:, keep].toarray() if is_sparse else x[:, keep]
    out = (dense - mean[keep]) / np.sqrt(var[keep])
    return np.clip(out, -SCALE_CLIP, SCALE_CLIP).astype(np.float32)


def standardise(features: np.ndarray) -> np.ndarray:
    """Column-wise zero mean, unit variance (constant columns become zero), float32."""
    x = np.asarray(features, dtype=np.float64)
    std = x.std(axis=0)
    return ((x - x.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)).astype(np.float32)
