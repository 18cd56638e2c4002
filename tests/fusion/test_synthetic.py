"""The synthetic tissue generator: deterministic, shaped as asked, and its difficulty knob works."""

from __future__ import annotations

import numpy as np
import pytest

from gauntlet.fusion.clustering import cluster
from gauntlet.fusion.methods import make_method
from gauntlet.fusion.metrics import annotated_scores
from gauntlet.fusion.slide import UNLABELLED
from gauntlet.fusion.synthetic import SyntheticConfig, generate_tissue, make_synthetic_slide


def _concat_ari(difficulty: float, seed: int) -> float:
    slide = make_synthetic_slide(SyntheticConfig(n_spots=400, difficulty=difficulty, seed=seed))
    embedding = make_method("concat").fit_transform(slide.features(), seed=0)
    return annotated_scores(slide.labels, cluster(embedding, slide.n_layers, "kmeans", seed=0))["ari"]


def test_difficulty_lowers_ari():
    aris = {d: np.mean([_concat_ari(d, seed) for seed in (0, 1)]) for d in (0.1, 0.5, 0.9)}
    assert aris[0.1] > aris[0.5] + 0.1 > aris[0.9] + 0.2, aris
    assert aris[0.1] > 0.8


def test_same_seed_same_slide_and_seed_changes_it():
    a = generate_tissue(SyntheticConfig(n_spots=100, seed=4))
    b = generate_tissue(SyntheticConfig(n_spots=100, seed=4))
    c = generate_tissue(SyntheticConfig(n_spots=100, seed=5))
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.image, b.image)
    assert not np.array_equal(a.counts, c.counts)


def test_shapes_layers_and_unlabelled_fraction():
    cfg = SyntheticConfig(n_spots=400, n_layers=6, n_genes=50, image_dim=12, unlabelled_fraction=0.1, seed=2)
    tissue = generate_tissue(cfg)
    assert tissue.counts.shape == (400, 50) and tissue.image.shape == (400, 12) and tissue.coords.shape == (400, 2)
    assert (tissue.counts >= 0).all() and np.array_equal(tissue.counts, np.round(tissue.counts))
    assert set(np.unique(tissue.labels)) == {UNLABELLED, 0, 1, 2, 3, 4, 5}
    assert (tissue.labels == UNLABELLED).mean() == pytest.approx(0.1, abs=0.01)
    slide = make_synthetic_slide(cfg)
    assert slide.n_layers == 6 and slide.label_names == ("L1", "L2", "L3", "L4", "L5", "L6")
    assert slide.expression.shape[0] == 400 and np.isfinite(slide.expression).all()


def test_layers_are_laminar_bands():
    tissue = generate_tissue(SyntheticConfig(n_spots=900, n_layers=4, seed=0))
    labelled = tissue.labels != UNLABELLED
    # layers stack along y: the mean depth of each layer increases with its index
    depth = [tissue.coords[labelled & (tissue.labels == k), 1].mean() for k in range(4)]
    assert depth == sorted(depth)


@pytest.mark.parametrize("field,value", [("difficulty", 1.5), ("n_layers", 1), ("unlabelled_fraction", 1.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**{field: value})
