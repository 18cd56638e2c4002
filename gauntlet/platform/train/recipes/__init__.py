"""The trainable policy families `gauntlet train --policy` knows, and what each one provides.

A family is one module here defining `RECIPE` (how `gauntlet train` builds, checks and exports it)
plus one registration in RECIPES (the one registry style, `gauntlet.runtime.registry`); its loss and batch preparation live with the policy itself
(`TrainablePolicy` in gauntlet/policies/base.py), so policies never import the platform. Training dispatches on the
recipe's abilities, never on the family's name. Recipe modules load on first use, so listing the
names (for `--help`) imports neither JAX nor torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gauntlet.runtime.registry import Registry, import_object

if TYPE_CHECKING:
    from gauntlet.data.dataset_format import Dataset
    from gauntlet.platform.train.config import TrainConfig
    from gauntlet.platform.train.preflight import Preflight
    from gauntlet.policies.base import ModelConfig, TrainablePolicy


VAL_BATCHES = 4  # held-out batches (of at most --batch-size samples) whose mean loss is val_loss
VAL_SEED = 7  # offsets --seed for the held-out batches' generator (validation_seed), apart from every step's


@dataclass(frozen=True)
class RecipeEntry:
    """One registered family."""

    recipe: str  # "module:attribute" of its TrainRecipe; imported on first use
    summary: str  # one line for `--policy`'s help: framework, trainer, modes


RECIPES: Registry[RecipeEntry] = Registry("trainable policy family")
RECIPES.register("vla", RecipeEntry("gauntlet.platform.train.recipes.vla:RECIPE", "JAX, JaxTrainer, LoRA or full"))
RECIPES.register("bc_rnn", RecipeEntry("gauntlet.platform.train.recipes.bc_rnn:RECIPE",
                                       "torch, TorchTrainer with DDP, full only; reads the dataset's "
                                       "low-dimensional observations"))


@dataclass(frozen=True)
class DatasetNeeds:
    """What a model requires of the dataset it trains on (checked before any worker starts)."""

    action_dim: int  # the dataset's action width must equal the model's
    state_dim: int  # and its observation/state width
    cameras: tuple[str, ...] = ()  # camera streams the model reads (dataset camera names)


@dataclass(frozen=True)
class TrainPlan:
    """A family's decision on how to train, made in the driver's pre-flight."""

    mode: str  # what will run: "lora" or "full"
    plan: dict[str, Any]  # plan.json and the plan lines printed before training
    identity: dict[str, Any]  # family fields --resume must find unchanged (beside the common ones)


@dataclass(frozen=True)
class WorkerContext:
    """Where one Ray Train worker stands in its group."""

    rank: int  # this worker's rank, 0..world-1
    world: int  # workers in the group
    single_node: bool  # every worker on this node (collectives may bind to loopback)


# A worker's raw-batch source: called once per step with that step's generator, returns a batch in
# dataset units for the policy's `prepare_train_batch`.
BatchSource = Callable[[np.random.Generator], Mapping[str, Any]]


class TrainRecipe(Protocol):
    """What `gauntlet train` needs from one policy family besides the policy's own loss."""

    name: str  # the --policy value
    trainer: str  # "jax" or "torch": the Ray Train trainer and worker backend that run it
    loss_name: str  # what the loss is (loss.png's y axis)

    def model_config(self, cfg: TrainConfig) -> tuple[ModelConfig, str]:
        """(config of the model that trains, fingerprint of its starting weights) from --base or a
        fresh model; TrainConfigError names the flag."""
        ...

    def dataset_needs(self, config: ModelConfig) -> DatasetNeeds:
        ...

    def plan(self, cfg: TrainConfig, config: ModelConfig, dataset: Dataset, workers_per_node: int) -> TrainPlan:
        """The mode and plan (e.g. the memory plan); TrainConfigError when the run cannot work."""
        ...

    def build_policy(self, cfg: TrainConfig, pre: Preflight) -> TrainablePolicy:
        """In a worker: the policy training starts from, with the dataset's statistics."""
        ...

    def open_batches(self, cfg: TrainConfig, pre: Preflight, policy: TrainablePolicy, worker: WorkerContext,
                     start_step: int) -> AbstractContextManager[BatchSource]:
        """In a worker: this worker's batches from `start_step` on (the ones an uninterrupted run
        draws at those steps)."""
        ...

    def validation_batches(self, cfg: TrainConfig, pre: Preflight, policy: TrainablePolicy,
                           episodes: np.ndarray) -> list[Mapping[str, Any]]:
        """In a worker: fixed raw batches from the held-out `episodes` (the same ones at every report,
        on every resume), whose mean loss is the run's val_loss."""
        ...

    def write_artifact(self, cfg: TrainConfig, pre: Preflight, state_dir: Path, dest: Path) -> list[dict[str, Any]]:
        """Write the servable checkpoint into `dest` from the final training checkpoint; returns
        the loss history it carries."""
        ...

    def serve_hint(self, cfg: TrainConfig, pre: Preflight, out: Path) -> str:
        """The command that serves the artifact."""
        ...


def validation_seed(cfg: TrainConfig) -> int:
    """The seed of the held-out batches' generator (every recipe's): --seed offset by VAL_SEED."""
    return cfg.seed + VAL_SEED


def training_episodes(cfg: TrainConfig, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(episodes trained on, episodes held out by --val-episodes: see gauntlet.data.sampling) of the
    split; TrainConfigError names the flag."""
    from gauntlet.data.sampling import SamplingError, holdout
    from gauntlet.platform.train.config import TrainConfigError

    try:
        return holdout(dataset, cfg.split, cfg.val_episodes)
    except SamplingError as exc:
        raise TrainConfigError(f"--val-episodes: {exc}") from None


def episode_weights(cfg: TrainConfig, dataset: Dataset, episodes: np.ndarray) -> np.ndarray:
    """Draw probability of each of `episodes` under --recovery-fraction (length-proportional when off)."""
    from gauntlet.data.sampling import SamplingError, recovery_weights
    from gauntlet.platform.train.config import TrainConfigError

    tags = dataset.episodes["recovery"].to_numpy(dtype=bool)[episodes]  # rows are in episode order
    try:
        return recovery_weights(dataset.lengths[episodes], tags, cfg.recovery_fraction)
    except SamplingError as exc:
        raise TrainConfigError(f"--recovery-fraction: {exc}") from None


def worker_episodes(cfg: TrainConfig, dataset: Dataset, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """(worker `rank`'s share of the trained episodes, their draw probabilities) for a family whose
    workers draw from episodes of their own (recovery and nominal ones dealt separately:
    gauntlet.data.sampling.deal). TrainConfigError, naming --recovery-fraction and --workers, when
    the share cannot honour the fraction (fewer recovery or nominal episodes than workers)."""
    from gauntlet.data.sampling import deal
    from gauntlet.platform.train.config import TrainConfigError

    trained = training_episodes(cfg, dataset)[0]
    mine = deal(trained, dataset.episodes["recovery"].to_numpy(dtype=bool)[trained], rank, world)
    try:
        return mine, episode_weights(cfg, dataset, mine)
    except TrainConfigError as exc:
        raise TrainConfigError(f"{exc} (worker {rank}'s share of --workers {world}: {len(mine)} of the "
                               f"{len(trained)} trained episodes; each worker needs episodes of both kinds)") from None


def get_recipe(name: str) -> TrainRecipe:
    """The registered recipe of `name` (its module imported now); UnknownNameError lists the trainable."""
    return import_object(RECIPES.lookup(name).recipe)
