"""Shared fixtures of the fusion tests: small real slides, one torch thread (2-core CI machines)."""

from __future__ import annotations

import pytest

from gauntlet.fusion.slide import Slide
from gauntlet.fusion.synthetic import SyntheticConfig, make_synthetic_slide


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def easy_slide() -> Slide:
    """400 spots, 4 layers, low difficulty: every method should find the layers."""
    return make_synthetic_slide(SyntheticConfig(n_spots=400, n_layers=4, difficulty=0.1, seed=7))


@pytest.fixture(scope="session")
def tiny_slide() -> Slide:
    """150 spots: for tests about plumbing, not accuracy."""
    return make_synthetic_slide(SyntheticConfig(n_spots=150, n_layers=3, n_genes=60, image_dim=16, seed=3))
