"""Every fusion method fits a small synthetic slide and recovers its layers far better than chance."""

from __future__ import annotations

import numpy as np
import pytest

from gauntlet.fusion.clustering import cluster
from gauntlet.fusion.methods import METHOD_NAMES, make_method
from gauntlet.fusion.methods.base import FusionConfig
from gauntlet.fusion.metrics import annotated_scores
from gauntlet.fusion.refine import refine

FAST = FusionConfig(epochs=60)


def _random_label_ari(labels: np.ndarray, n_clusters: int) -> float:
    rng = np.random.default_rng(0)
    return np.mean([annotated_scores(labels, rng.integers(0, n_clusters, labels.shape))["ari"] for _ in range(5)])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_beats_random_labels(easy_slide, name):
    embedding = make_method(name, FAST).fit_transform(easy_slide.features(), seed=0)

    assert embedding.shape[0] == easy_slide.n_spots and embedding.ndim == 2
    assert embedding.dtype == np.float32 and np.isfinite(embedding).all()
    predicted = cluster(embedding, easy_slide.n_layers, "kmeans", seed=0)
    ari = annotated_scores(easy_slide.labels, predicted)["ari"]
    chance = _random_label_ari(easy_slide.labels, easy_slide.n_layers)
    assert abs(chance) < 0.05
    assert ari > chance + 0.4, f"{name}: ARI {ari:.3f} vs random labels {chance:.3f}"


@pytest.mark.parametrize("name", ["concat", "qformer"])
def test_method_runs_after_refine(easy_slide, name):
    features = refine(easy_slide.features(), 16)
    assert features.expression.shape == (easy_slide.n_spots, 16) and features.image.shape[1] == 16
    embedding = make_method(name, FAST).fit_transform(features, seed=1)
    predicted = cluster(embedding, easy_slide.n_layers, "gmm_eee", seed=1)
    assert annotated_scores(easy_slide.labels, predicted)["ari"] > 0.4


def test_same_seed_same_embedding_and_seed_matters(tiny_slide):
    method = make_method("attention", FusionConfig(epochs=5))
    a = method.fit_transform(tiny_slide.features(), seed=0)
    b = method.fit_transform(tiny_slide.features(), seed=0)
    c = method.fit_transform(tiny_slide.features(), seed=1)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown fusion method 'nope'"):
        make_method("nope")
