"""One benchmark trial: load a slide, (refine,) fuse, cluster, score. One typed row per trial.

`run_trial` never raises for a bad input or a collapsing fit: any FusionError becomes a row with
status "failed" and the reason, so one broken slide or diverging seed cannot take a sweep down.
Programming errors still raise, so they are not mistaken for data problems.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from gauntlet.fusion.errors import FusionError
from gauntlet.fusion.methods import make_method
from gauntlet.fusion.methods.base import FusionConfig
from gauntlet.fusion.refine import refine
from gauntlet.fusion.slide import Slide
from gauntlet.fusion.slide_sources import SlideLoadOptions, load_slide, slide_display_name

STATUS_OK = "ok"
STATUS_FAILED = "failed"
METRIC_COLUMNS = ("ari_kmeans", "nmi_kmeans", "ari_gmm", "nmi_gmm")
# a trial row's columns, in the order the sweep's tables show them
ROW_COLUMNS = (
    "slide", "method", "refine_dim", "seed", "status", "error_type", "reason", *METRIC_COLUMNS,
    "n_spots", "n_layers", "n_scored", "embedding_dim", "fit_s",
)


@dataclass(frozen=True)
class TrialSpec:
    """One cell of the sweep grid."""

    # slide id (`synthetic-i` or an .h5ad path)
    slide_id: str
    # fusion method name (see gauntlet.fusion.methods.METHODS)
    method: str
    # PCA width of the refine step; 0 = no refine
    refine_dim: int
    # seed of the method's initialisation, masks and clustering
    seed: int


def fuse_and_score(slide: Slide, method: str, refine_dim: int, seed: int, config: FusionConfig) -> dict:
    """Fuses `slide` with `method` and scores both clusterings; raises FusionError on bad input.

    The method gets `slide.features()`, the label-free view; labels are used only after it returns.
    """
    # imported here: scikit-learn is a trial's need, not the sweep driver's (nor its --help's)
    from gauntlet.fusion.clustering import cluster
    from gauntlet.fusion.metrics import annotated_scores

    features = slide.features()
    if refine_dim:
        features = refine(features, refine_dim)
    started = time.perf_counter()
    embedding = make_method(method, config).fit_transform(features, seed)
    fit_s = time.perf_counter() - started
    what = f"{method} on slide {slide.name} (seed {seed}, refine {refine_dim or 'off'})"
    row: dict = {"fit_s": fit_s, "embedding_dim": int(embedding.shape[1]), "n_layers": slide.n_layers}
    for clusterer, suffix in (("kmeans", "kmeans"), ("gmm_eee", "gmm")):
        predicted = cluster(embedding, slide.n_layers, clusterer, seed, what=what)
        scores = annotated_scores(slide.labels, predicted)
        row[f"ari_{suffix}"] = scores["ari"]
        row[f"nmi_{suffix}"] = scores["nmi"]
        row["n_scored"] = scores["n_scored"]
    return row


def run_trial(spec: TrialSpec, config: FusionConfig, options: SlideLoadOptions) -> dict:
    """A result row for `spec`: metrics with status "ok", or status "failed" with the reason."""
    row: dict = {
        "slide": slide_display_name(spec.slide_id),
        "method": spec.method,
        "refine_dim": int(spec.refine_dim),
        "seed": int(spec.seed),
        "status": STATUS_OK,
        "reason": "",
        "error_type": "",
        "n_spots": 0,
        "n_layers": 0,
        "n_scored": 0,
        "embedding_dim": 0,
        "fit_s": float("nan"),
        **{m: float("nan") for m in METRIC_COLUMNS},
    }
    try:
        slide = load_slide(spec.slide_id, options)
        row["n_spots"] = slide.n_spots
        row.update(fuse_and_score(slide, spec.method, spec.refine_dim, spec.seed, config))
    except FusionError as exc:
        row.update(status=STATUS_FAILED, reason=str(exc), error_type=type(exc).__name__)
    for m in METRIC_COLUMNS:
        row[m] = float(row[m]) if np.isfinite(row[m]) else float("nan")
    return row
