"""The torch half of a training worker: Adam under DDP, and pickle-free checkpoints.

Data parallelism is torch DDP (Gloo on CPU, NCCL on GPU) set up by `ray.train.torch.prepare_model`:
each worker draws from its own share of the data and DDP averages the gradients in `backward`.

A training checkpoint holds the policy as its own servable checkpoint (`policy/`), the optimizer
state as `.npz` + JSON (no pickle: torch's `state_dict` is flattened to arrays and numbers), and
the loss history.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gauntlet.platform.train.recipes import WorkerContext
from gauntlet.platform.train.worker import StepMetrics, digest_arrays
from gauntlet.runtime.manifests import read_json, write_json

if TYPE_CHECKING:
    from gauntlet.platform.train.config import TrainConfig
    from gauntlet.platform.train.preflight import Preflight
    from gauntlet.policies.base import TrainablePolicy

OPTIMIZER_ARRAYS = "optimizer.npz"
OPTIMIZER_META = "optimizer.json"
HISTORY_FILE = "history.json"
POLICY_DIR = "policy"


class TorchTrainable(Protocol):
    """A TrainablePolicy whose weights are a torch module and which saves itself as a checkpoint."""

    def train_weights(self, mode: str, seed: int) -> Any: ...

    def train_loss(self, weights: Any, batch: Any) -> Any: ...

    def save(self, checkpoint_dir: str | Path, *, extra: dict[str, Any] | None = None) -> Path: ...

    @classmethod
    def load(cls, checkpoint_dir: str | Path) -> TorchTrainable: ...


def optimizer_to_files(state: dict[str, Any], directory: Path) -> None:
    """torch optimizer state_dict -> arrays (.npz) + hyperparameters (.json), pickle-free."""
    import torch

    arrays, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            key = f"{idx}/{name}"
            if isinstance(value, torch.Tensor):  # else a plain number
                arrays[key] = value.detach().cpu().numpy()
            else:
                scalars[key] = value
    np.savez(directory / OPTIMIZER_ARRAYS, **arrays)
    write_json(directory / OPTIMIZER_META, {"param_groups": state["param_groups"], "scalars": scalars}, indent=None)


def optimizer_from_files(directory: Path) -> dict[str, Any]:
    import torch

    meta = read_json(directory / OPTIMIZER_META, "optimizer state")
    state: dict[int, dict[str, Any]] = {}
    with np.load(directory / OPTIMIZER_ARRAYS, allow_pickle=False) as npz:
        for key in npz.files:
            idx, name = key.split("/", 1)
            state.setdefault(int(idx), {})[name] = torch.from_numpy(npz[key].copy())
    for key, value in meta["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def read_history(directory: Path) -> list[dict[str, Any]]:
    """The loss history of a torch training checkpoint."""
    return list(read_json(directory / HISTORY_FILE, "training history"))


def setup_process(cfg: TrainConfig, worker: WorkerContext) -> None:
    """Seed torch's global generator (anything the policy does not seed itself)."""
    import torch

    torch.manual_seed(cfg.seed)


class TorchBackend:
    """Adam (constant rate, clipped) on the policy's module, wrapped for DDP."""

    def __init__(self, cfg: TrainConfig, policy: TorchTrainable, worker: WorkerContext):
        import ray.train.torch
        import torch

        self.cfg, self.policy, self.world = cfg, policy, worker.world
        self.module = policy.train_weights("full", cfg.seed)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=cfg.learning_rate,
                                          weight_decay=cfg.weight_decay)
        # DDP keeps these very parameter tensors, so a later restore (in place) reaches it too.
        self.model = ray.train.torch.prepare_model(self.module)
        self.model.train()

    def restore(self, directory: Path) -> tuple[int, list[dict[str, Any]]]:
        restored = type(self.policy).load(directory / POLICY_DIR)
        self.module.load_state_dict(restored.train_weights("full", 0).state_dict())
        self.optimizer.load_state_dict(optimizer_from_files(directory))
        history = read_history(directory)
        return (history[-1]["step"] if history else 0), history

    def step(self, batch: dict[str, np.ndarray], step: int) -> StepMetrics:
        import torch

        loss = self.policy.train_loss(self.model, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces the gradients here
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm))
        self.optimizer.step()
        # The logged loss is the mean over workers, as in the JAX backend.
        loss_value = loss.detach().clone()
        if self.world > 1:
            torch.distributed.all_reduce(loss_value)
            loss_value /= self.world
        return StepMetrics(float(loss_value), grad_norm, self.cfg.learning_rate)

    def param_digest(self) -> str:
        return digest_arrays(p.detach().cpu().numpy() for p in self.module.parameters())

    def eval_loss(self, batch: dict[str, np.ndarray]) -> float:
        import torch

        # The unwrapped module: no gradient, no DDP collective (each worker measures the same batches).
        with torch.no_grad():
            return float(self.policy.train_loss(self.module, {k: torch.from_numpy(np.ascontiguousarray(v))
                                                              for k, v in batch.items()}))

    def save(self, directory: Path, steps_taken: int, history: list[dict[str, Any]]) -> None:
        self.policy.save(directory / POLICY_DIR, extra={"trained_steps": steps_taken})
        optimizer_to_files(self.optimizer.state_dict(), directory)
        write_json(directory / HISTORY_FILE, history, indent=None)


def open_backend(cfg: TrainConfig, pre: Preflight, policy: TrainablePolicy, worker: WorkerContext) -> TorchBackend:
    return TorchBackend(cfg, policy, worker)  # type: ignore[arg-type]


def ray_trainer(loop: Any, loop_config: dict[str, Any], scaling: Any, run_config: Any, cfg: TrainConfig) -> Any:
    from ray.train.torch import TorchTrainer

    return TorchTrainer(loop, train_loop_config=loop_config, scaling_config=scaling, run_config=run_config)
