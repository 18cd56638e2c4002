"""The slide: one tissue section's spots, their features and (separately) their layer labels.

Ground truth must never reach a fusion method. Rather than trusting every method to ignore a field,
methods receive `SpotFeatures`, a view that has no label field at all (slots, frozen): a method that
tried to read labels would fail with AttributeError, and `tests/fusion/test_label_isolation.py`
checks both that and that permuting the labels leaves every method's output bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNLABELLED = -1  # label code of a spot without annotation; excluded from ARI/NMI


@dataclass(frozen=True, slots=True)
class SpotFeatures:
    """What a fusion method may see: features and positions of the spots, never their labels."""

    # slide identifier, only for error messages and logs
    name: str
    # (N, G) float32 expression features (log-normalised, gene-standardised)
    expression: np.ndarray
    # (N, F) float32 image embedding of each spot's patch
    image: np.ndarray
    # (N, 2) float32 spot centres in slide units
    coords: np.ndarray

    @property
    def n_spots(self) -> int:
        return int(self.expression.shape[0])


@dataclass(frozen=True)
class Slide:
    """A slide with its ground truth, as loaded from `.h5ad` + cache or made by the generator."""

    # slide identifier (file stem or `synthetic:i`)
    name: str
    # (N, G) float32 expression features (log-normalised, gene-standardised)
    expression: np.ndarray
    # (N, F) float32 image embedding of each spot's patch
    image: np.ndarray
    # (N, 2) float32 spot centres in slide units
    coords: np.ndarray
    # (N,) int64 layer code per spot; UNLABELLED (-1) where the spot has no annotation
    labels: np.ndarray
    # human-readable layer names, indexed by label code
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.expression.shape[0]
        for field, arr, ndim in (("image", self.image, 2), ("coords", self.coords, 2), ("labels", self.labels, 1)):
            if arr.ndim != ndim or arr.shape[0] != n:
                raise ValueError(
                    f"slide {self.name}: `{field}` has shape {arr.shape}, expected {n} rows "
                    f"(one per spot of `expression`, shape {self.expression.shape})"
                )
        if self.coords.shape[1] != 2:
            raise ValueError(f"slide {self.name}: `coords` must be (N, 2), got {self.coords.shape}")

    @property
    def n_spots(self) -> int:
        return int(self.expression.shape[0])

    @property
    def n_layers(self) -> int:
        """Number of annotated layers actually present: the cluster count used for evaluation."""
        present = np.unique(self.labels[self.labels != UNLABELLED])
        return int(present.size)

    def features(self) -> SpotFeatures:
        """The label-free view handed to fusion methods."""
        return SpotFeatures(name=self.name, expression=self.expression, image=self.image, coords=self.coords)
