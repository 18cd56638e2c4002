"""The interface every fusion method implements, its config, and the shared training loop.

A method is fitted on one slide's `SpotFeatures` (never its labels; see `gauntlet.fusion.slide`) and
returns one fused embedding per spot. Learned methods train self-supervised, full-batch: a Visium
slide has a few thousand spots, so one batched forward over all of them is both the fastest and the
simplest schedule, and it keeps every step deterministic for a given seed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from gauntlet.fusion.errors import TrainingDivergedError
from gauntlet.fusion.slide import SpotFeatures

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class FusionConfig:
    """Hyper-parameters shared by the fusion methods (each method reads the ones it needs)."""

    # width of a learned method's fused embedding
    out_dim: int = 32
    # hidden width of the learned methods' layers and attention tokens
    hidden_dim: int = 64
    # full-batch training epochs of a learned method
    epochs: int = 150
    # AdamW learning rate
    lr: float = 2e-3
    # AdamW weight decay
    weight_decay: float = 1e-4
    # attention heads (hidden_dim must be divisible by it)
    n_heads: int = 4
    # softmax temperature of the contrastive losses (basic_contrastive, staig)
    temperature: float = 0.2
    # basic_contrastive: feature dropout on both inputs in training; without it the encoders
    # memorise each spot's noise (hundreds of dims, a few hundred spots) instead of aligning layers
    input_dropout: float = 0.5
    # probability that attention drops one modality's token of a spot during training
    modality_dropout: float = 0.3
    # qformer: learned query tokens
    n_queries: int = 4
    # qformer: neighbour tokens within this many spot spacings of a spot (itself included)
    token_radius_spacings: float = 2.0
    # qformer: at most this many tokens per spot (nearest first); fewer at the slide's edge
    max_tokens: int = 16
    # qformer: probability that a spot's own token is hidden in training (forces use of neighbours)
    centre_token_dropout: float = 0.5
    # staig: spatial neighbours per spot in the graph
    knn: int = 6
    # staig: drop probability of the edge between the most similar images
    edge_drop_min: float = 0.1
    # staig: drop probability of the edge between the most different images
    edge_drop_max: float = 0.6
    # staig: fraction of expression features masked in each augmented view
    feature_mask_rate: float = 0.2
    # staig: KMeans clusters of the image embedding used as pseudo-labels to debias negatives
    n_pseudo_labels: int = 10
    # torch device the tensors live on ("cpu", "cuda", "cuda:1", ...)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.hidden_dim % self.n_heads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.edge_drop_min <= self.edge_drop_max < 1.0:
            raise ValueError(
                f"need 0 <= edge_drop_min ({self.edge_drop_min}) <= edge_drop_max ({self.edge_drop_max}) < 1"
            )
        for name in ("out_dim", "hidden_dim", "epochs", "n_queries", "max_tokens", "knn", "n_pseudo_labels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError(f"lr ({self.lr}) and temperature ({self.temperature}) must be > 0")


class FusionMethod(ABC):
    """fit on a slide's label-free features -> (N, D) float32 fused embedding."""

    name: ClassVar[str]

    def __init__(self, config: FusionConfig | None = None) -> None:
        self.config = config or FusionConfig()

    @abstractmethod
    def fit_transform(self, features: SpotFeatures, seed: int) -> np.ndarray:
        """Fits on `features` with `seed` and returns one fused embedding per spot."""


# (loss closure, embedding closure) built by a learned method for one slide
Objective = tuple["Callable[[], torch.Tensor]", "Callable[[], torch.Tensor]"]


class LearnedFusionMethod(FusionMethod):
    """A torch model trained self-supervised on the slide; subclasses only build the objective."""

    @abstractmethod
    def build(
        self, expr: torch.Tensor, image: torch.Tensor, features: SpotFeatures, generator: torch.Generator
    ) -> tuple[torch.nn.Module, Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
        """(model, loss closure, embedding closure) for this slide; random masks use `generator`."""

    def fit_transform(self, features: SpotFeatures, seed: int) -> np.ndarray:
        import torch

        device = torch.device(self.config.device)
        torch.manual_seed(seed)  # parameter init
        # masks are drawn on the tensors' device from this generator, never on the host and copied
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        expr = torch.as_tensor(features.expression, dtype=torch.float32, device=device)
        image = torch.as_tensor(features.image, dtype=torch.float32, device=device)
        model, loss_fn, embed_fn = self.build(expr, image, features, generator)
        model.to(device)
        optimiser = torch.optim.AdamW(model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        model.train()
        for epoch in range(self.config.epochs):
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn()
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"{self.name} on slide {features.name}: loss became {loss.item()} at epoch {epoch} "
                    f"(seed {seed}); lower --lr or check the slide's features"
                )
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            return embed_fn().detach().float().cpu().numpy()


def reconstruction_loss(
    z: torch.Tensor, expr: torch.Tensor, image: torch.Tensor, decoders: torch.nn.ModuleDict
) -> torch.Tensor:
    """Mean-squared error of decoding both modalities from the fused embedding `z` (N, D).

    Each modality's term is averaged over its own features, so a 512-gene block does not outweigh a
    64-dim image embedding.
    """
    import torch.nn.functional as F

    return F.mse_loss(decoders["expression"](z), expr) + F.mse_loss(decoders["image"](z), image)


def make_decoders(out_dim: int, n_genes: int, image_dim: int, hidden_dim: int) -> torch.nn.ModuleDict:
    """One small MLP decoder per modality, from the fused embedding."""
    from torch import nn

    def mlp(width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(out_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, width))

    return nn.ModuleDict({"expression": mlp(n_genes), "image": mlp(image_dim)})
