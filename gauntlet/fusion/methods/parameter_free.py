"""Fusion baselines without training: `concat`, `mean`, `element_wise_sum`.

They are the reference every learned method must beat. They differ in how they weigh the modalities:
`concat` keeps both spaces side by side (each scaled to the same total variance), `mean` projects both
to a common width and averages them after the same balancing, `element_wise_sum` adds the projected
blocks as they are, so the modality with more variance dominates, as the sum baselines in the
fusion literature do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gauntlet.fusion.methods.base import FusionMethod
from gauntlet.fusion.slide import SpotFeatures

if TYPE_CHECKING:
    import torch


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=0, keepdim=True)


def _unit_total_variance(x: torch.Tensor) -> torch.Tensor:
    """Scales a centred block so its variance summed over columns is 1 (blocks then weigh equally)."""
    total = x.pow(2).sum(dim=1).mean().sqrt()
    return x / total.clamp_min(1e-12)


def _project(x: torch.Tensor, width: int) -> torch.Tensor:
    """Principal-component projection of a centred (N, D) block to (N, width)."""
    import torch

    if x.shape[1] == width:
        return x
    # full SVD is deterministic (no random sketch) and cheap at slide sizes (N ~ 4k, D <= 512)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return x @ vh[:width].T  # (N, D) @ (D, width)


def _tensors(features: SpotFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    expr = _centred(torch.as_tensor(features.expression, dtype=torch.float32))
    image = _centred(torch.as_tensor(features.image, dtype=torch.float32))
    return expr, image


class Concat(FusionMethod):
    name = "concat"

    def fit_transform(self, features: SpotFeatures, seed: int) -> np.ndarray:
        import torch

        expr, image = _tensors(features)
        return torch.cat([_unit_total_variance(expr), _unit_total_variance(image)], dim=1).numpy()


class Mean(FusionMethod):
    name = "mean"

    def fit_transform(self, features: SpotFeatures, seed: int) -> np.ndarray:
        expr, image = _tensors(features)
        width = min(expr.shape[1], image.shape[1])
        a = _unit_total_variance(_project(expr, width))
        b = _unit_total_variance(_project(image, width))
        return (0.5 * (a + b)).numpy()


class ElementWiseSum(FusionMethod):
    name = "element_wise_sum"

    def fit_transform(self, features: SpotFeatures, seed: int) -> np.ndarray:
        expr, image = _tensors(features)
        width = min(expr.shape[1], image.shape[1])
        return (_project(expr, width) + _project(image, width)).numpy()
