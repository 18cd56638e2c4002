"""Clustering, metrics on annotated spots only, and failures reported as rows instead of crashes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gauntlet.fusion.clustering import cluster
from gauntlet.fusion.errors import NonFiniteEmbeddingError
from gauntlet.fusion.methods.base import FusionConfig
from gauntlet.fusion.metrics import annotated_scores
from gauntlet.fusion.slide import UNLABELLED
from gauntlet.fusion.slide_sources import SlideLoadOptions
from gauntlet.fusion.synthetic import SyntheticConfig
from gauntlet.fusion.trial import TrialSpec, fuse_and_score, run_trial

SMALL = SlideLoadOptions(synthetic=SyntheticConfig(n_spots=150, n_layers=3, n_genes=60, image_dim=16))


def test_nan_embedding_raises_typed_error():
    emb = np.random.default_rng(0).normal(size=(50, 4))
    emb[7, 1] = np.nan
    emb[9, 0] = np.inf
    for method in ("kmeans", "gmm_eee"):
        with pytest.raises(NonFiniteEmbeddingError, match="2 NaN/inf values in 2 of 50 spots"):
            cluster(emb, 3, method, seed=0, what="test embedding")


def test_nan_features_give_a_reported_failure_not_a_crash(tiny_slide):
    expression = tiny_slide.expression.copy()
    expression[5, 0] = np.nan
    broken = dataclasses.replace(tiny_slide, expression=expression)
    with pytest.raises(NonFiniteEmbeddingError, match=r"concat on slide synthetic-3"):
        fuse_and_score(broken, "concat", 0, 0, FusionConfig())


def test_diverging_training_is_a_failed_row():
    row = run_trial(TrialSpec("synthetic-0", "attention", 0, 0), FusionConfig(epochs=5, lr=1e30), SMALL)
    assert row["status"] == "failed" and row["error_type"] == "TrainingDivergedError"
    assert "attention on slide synthetic-0" in row["reason"] and "--lr" in row["reason"]
    assert np.isnan(row["ari_kmeans"])


def test_missing_h5ad_content_is_a_failed_row(tmp_path):
    from gauntlet.fusion.anndata_io import write_h5ad

    path = write_h5ad(tmp_path / "bad.h5ad", np.ones((20, 5)), obs={"batch": ["a"] * 20},
                      obsm={"spatial": np.zeros((20, 2))})
    row = run_trial(TrialSpec(str(path), "concat", 0, 0), FusionConfig(), SMALL)
    assert (row["status"], row["error_type"], row["slide"]) == ("failed", "MissingLabelsError", "bad")


def test_ok_trial_row():
    row = run_trial(TrialSpec("synthetic-1", "concat", 8, 0), FusionConfig(), SMALL)
    assert row["status"] == "ok" and row["reason"] == ""
    assert row["n_spots"] == 144 and row["n_layers"] == 3 and row["embedding_dim"] == 16
    assert 0.3 < row["ari_kmeans"] <= 1.0 and 0.3 < row["nmi_gmm"] <= 1.0


def test_scores_ignore_unlabelled_spots():
    labels = np.array([0, 0, 1, 1, 2, 2, UNLABELLED, UNLABELLED])
    predicted = np.array([5, 5, 3, 3, 4, 4, 5, 3])  # perfect on annotated spots, arbitrary elsewhere
    scores = annotated_scores(labels, predicted)
    assert scores == {"ari": 1.0, "nmi": 1.0, "n_scored": 6}
    # counting the unlabelled spots as a class would have lowered the score
    assert annotated_scores(np.where(labels < 0, 3, labels), predicted)["ari"] < 1.0


def test_tied_gaussian_mixture_separates_sheared_clusters():
    rng = np.random.default_rng(0)
    shear = np.array([[2.5, 0.0], [2.0, 0.3]])  # one shared, strongly elongated covariance
    centres = np.array([[0.0, 0.0], [0.0, 4.0], [0.0, 8.0]])
    truth = np.repeat(np.arange(3), 150)
    x = centres[truth] + rng.normal(size=(450, 2)) @ shear
    gmm = annotated_scores(truth, cluster(x, 3, "gmm_eee", seed=0))["ari"]
    kmeans = annotated_scores(truth, cluster(x, 3, "kmeans", seed=0))["ari"]
    assert gmm > 0.8 and gmm > kmeans + 0.2
