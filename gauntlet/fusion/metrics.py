"""Clustering agreement with the manual annotation: ARI and NMI over annotated spots only.

Unannotated spots (label UNLABELLED) have no ground truth to agree with; counting them as a class
of their own would reward or punish a method for where it puts them, so they are excluded.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from gauntlet.fusion.slide import UNLABELLED


def annotated_scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """{"ari", "nmi", "n_scored"} over the spots whose label is not UNLABELLED."""
    labels = np.asarray(labels)
    predicted = np.asarray(predicted)
    if labels.shape != predicted.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predicted.shape} differ in shape")
    scored = labels != UNLABELLED
    if not scored.any():
        raise ValueError("no annotated spot to score against")
    truth, guess = labels[scored], predicted[scored]
    return {
        "ari": float(adjusted_rand_score(truth, guess)),
        "nmi": float(normalized_mutual_info_score(truth, guess)),
        "n_scored": int(scored.sum()),
    }
