"""A generator of layered tissue slides, so every fusion sweep runs anywhere without downloads.

The tissue is laminar like a cortex section: curved bands of uneven thickness across a Visium-like
grid of spots. Each layer has marker genes; on top, spatially smooth expression programs that ignore
the layers (gradients, local niches) and Poisson-Gamma count noise blur them. An image embedding per
spot is correlated with the layer but carries its own smooth nuisance and noise, so neither modality
alone is perfect and fusing them can help. One knob, `difficulty` in [0, 1], weakens the layer
signal and strengthens the nuisance in both modalities together, so clustering accuracy (ARI) falls
as it rises; `tests/fusion/test_synthetic.py` checks that it does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gauntlet.fusion.expression import prepare_expression, standardise
from gauntlet.fusion.slide import UNLABELLED, Slide


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape and difficulty of one synthetic slide."""

    # approximate number of spots (rounded to a full square grid)
    n_spots: int = 1000
    # number of laminar layers (clusters to recover)
    n_layers: int = 5
    # number of genes in the raw count matrix
    n_genes: int = 200
    # width of the image embedding (a histology encoder's output size)
    image_dim: int = 64
    # 0 = clean layers, 1 = layer signal mostly drowned in nuisance and noise
    difficulty: float = 0.3
    # fraction of spots left without annotation (excluded from ARI/NMI, as in real data)
    unlabelled_fraction: float = 0.05
    # marker genes per layer (up-regulated in that layer)
    markers_per_layer: int = 12
    # number of layer-independent smooth expression/image programs
    n_smooth_programs: int = 4
    # seed of every random draw: same config, same slide
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty}")
        if self.n_layers < 2:
            raise ValueError(f"n_layers must be >= 2, got {self.n_layers}")
        if self.n_spots < 4 * self.n_layers:
            raise ValueError(f"n_spots must be >= 4 * n_layers = {4 * self.n_layers}, got {self.n_spots}")
        if self.n_genes < self.n_layers or self.image_dim < 2:
            raise ValueError(f"n_genes ({self.n_genes}) must be >= n_layers and image_dim >= 2")
        if not 0.0 <= self.unlabelled_fraction < 1.0:
            raise ValueError(f"unlabelled_fraction must be in [0, 1), got {self.unlabelled_fraction}")


@dataclass(frozen=True)
class SyntheticTissue:
    """Raw output of the generator, before expression preprocessing (what an `.h5ad` would hold)."""

    # (N, G) float32 raw counts
    counts: np.ndarray
    # (N, F) float32 image embedding
    image: np.ndarray
    # (N, 2) float32 spot centres
    coords: np.ndarray
    # (N,) int64 layer code, UNLABELLED where not annotated
    labels: np.ndarray
    # layer names by code
    label_names: tuple[str, ...]


def _smooth_fields(coords: np.ndarray, n_fields: int, rng: np.random.Generator) -> np.ndarray:
    """(N, n_fields) low-frequency random fields (random Fourier features), unit variance each."""
    n_waves = 8
    freqs = rng.normal(0.0, 2.0 * np.pi * 1.5, size=(n_fields, n_waves, 2))  # cycles across the slide
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(n_fields, n_waves))
    proj = np.einsum("nd,fwd->nfw", coords, freqs) + phases  # (N, n_fields, n_waves)
    fields = np.cos(proj).sum(axis=2)
    return standardise(fields).astype(np.float64)


def _grid(n_spots: int) -> np.ndarray:
    """(N, 2) Visium-like spot centres in units of the spot spacing: odd rows shifted by half of it."""
    side = max(2, int(round(np.sqrt(n_spots))))
    gx, gy = np.meshgrid(np.arange(side), np.arange(side), indexing="xy")
    x = gx + 0.5 * (gy % 2)
    y = gy * (np.sqrt(3.0) / 2.0)
    return np.stack([x.ravel(), y.ravel()], axis=1).astype(np.float64)


def _layers(unit: np.ndarray, n_layers: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) layer code in [0, n_layers): bands of a laminar depth with a wavy boundary."""
    amplitude, wavelength, phase = rng.uniform(0.03, 0.08), rng.uniform(0.6, 1.4), rng.uniform(0, 2 * np.pi)
    depth = unit[:, 1] + amplitude * np.sin(2.0 * np.pi * unit[:, 0] / wavelength + phase)
    thickness = rng.dirichlet(np.full(n_layers, 8.0))
    edges = np.quantile(depth, np.cumsum(thickness)[:-1])
    return np.searchsorted(edges, depth).astype(np.int64)


def _smooth_scale(difficulty: float) -> float:
    """Weight of the layer-independent smooth programs, in both modalities."""
    return 0.15 + 0.5 * difficulty


def _counts(config: SyntheticConfig, unit: np.ndarray, layer: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, G) raw counts: log-rate = gene baseline + layer markers + smooth programs, Gamma-Poisson noise."""
    d = config.difficulty
    layer_lfc = 2.0 * (1.0 - 0.7 * d)  # log fold-change of markers in their layer
    smooth_scale = _smooth_scale(d)
    dispersion = 0.05 + 0.4 * d  # Gamma-Poisson overdispersion (1/shape)
    baseline = rng.normal(0.5, 0.8, size=config.n_genes)
    layer_effect = np.zeros((config.n_layers, config.n_genes))
    for k in range(config.n_layers):  # loop over layers, not spots: K iterations
        markers = rng.choice(config.n_genes, size=min(config.markers_per_layer, config.n_genes), replace=False)
        layer_effect[k, markers] = layer_lfc * rng.uniform(0.6, 1.4, size=markers.size)
    smooth = _smooth_fields(unit, config.n_smooth_programs, rng)  # (N, P)
    loadings = rng.normal(0.0, 1.0, size=(config.n_smooth_programs, config.n_genes)) / np.sqrt(
        config.n_smooth_programs
    )
    log_rate = baseline[None, :] + layer_effect[layer] + smooth_scale * (smooth @ loadings)
    library = rng.lognormal(0.0, 0.3, size=(unit.shape[0], 1))
    rate = np.exp(log_rate) * library
    gamma = rng.gamma(1.0 / dispersion, dispersion, size=rate.shape)
    return rng.poisson(rate * gamma).astype(np.float32)


def _image(config: SyntheticConfig, unit: np.ndarray, layer: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, F) image embedding: layer centroid + its own smooth nuisance + isotropic noise."""
    d = config.difficulty
    smooth_scale = _smooth_scale(d)
    image_signal = 0.5 * (1.0 - 0.6 * d)
    image_noise = 1.0 + 0.8 * d
    centroids = rng.normal(0.0, 1.0, size=(config.n_layers, config.image_dim))
    img_smooth = _smooth_fields(unit, config.n_smooth_programs, rng) @ rng.normal(
        0.0, 1.0, size=(config.n_smooth_programs, config.image_dim)
    )
    return (
        image_signal * centroids[layer]
        + smooth_scale * img_smooth / np.sqrt(config.n_smooth_programs)
        + image_noise * rng.normal(size=(unit.shape[0], config.image_dim))
    )


def generate_tissue(config: SyntheticConfig) -> SyntheticTissue:
    """Draws one slide's raw counts, image embedding, coordinates and labels (in that draw order:
    the same seed gives the same slide)."""
    rng = np.random.default_rng(config.seed)
    coords = _grid(config.n_spots)
    unit = (coords - coords.min(axis=0)) / np.ptp(coords, axis=0).clip(1e-9)  # (N, 2) in [0, 1]
    n = coords.shape[0]
    layer = _layers(unit, config.n_layers, rng)
    counts = _counts(config, unit, layer, rng)
    image = _image(config, unit, layer, rng)
    labels = layer.copy()
    n_unlabelled = int(round(config.unlabelled_fraction * n))
    if n_unlabelled:
        labels[rng.choice(n, size=n_unlabelled, replace=False)] = UNLABELLED
    spacing = 100.0  # Visium centre-to-centre distance in micrometres, for realistic units
    return SyntheticTissue(
        counts=counts,
        image=image.astype(np.float32),
        coords=(coords * spacing).astype(np.float32),
        labels=labels,
        label_names=tuple(f"L{k + 1}" for k in range(config.n_layers)),
    )


def make_synthetic_slide(config: SyntheticConfig, max_genes: int = 512, name: str | None = None) -> Slide:
    """A ready-to-fuse slide: the generator's output through the same preprocessing as `.h5ad` data."""
    tissue = generate_tissue(config)
    return Slide(
        name=name or f"synthetic-{config.seed}",
        expression=prepare_expression(tissue.counts, max_genes=max_genes),
        image=standardise(tissue.image),
        coords=tissue.coords,
        labels=tissue.labels,
        label_names=tissue.label_names,
    )
