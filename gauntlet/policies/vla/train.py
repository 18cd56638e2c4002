"""Training helpers: an optax train step over a "trainable" and a "frozen" variable tree, for any loss.

mode="lora": trainable = {"lora": adapter}, frozen = {"params": base}. Gradients, optimizer state
             and updates exist only for the adapter; the base is an input that is never written, so it
             stays bit-identical (and needs no optimizer memory: the point of LoRA on small GPUs).
mode="full": trainable = {"params": base}, frozen = {} (no adapter).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import optax

from gauntlet.policies.vla.model import VLAModel, flow_matching_loss

TrainMode = Literal["lora", "full"]
TRAIN_MODES = ("lora", "full")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # () int32: optimizer steps taken
    trainable: dict[str, Any]  # the variables that receive gradients
    frozen: dict[str, Any]  # the variables that do not (the base, in LoRA mode)
    opt_state: Any  # optax state for `trainable` only


def make_optimizer(learning_rate: float = 1e-3, weight_decay: float = 1e-4, clip_norm: float = 1.0,
                   warmup_steps: int = 0, total_steps: int | None = None) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and an optional warmup + cosine schedule."""
    schedule: Any = learning_rate
    if total_steps:
        schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 1), total_steps)
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay))


def split_variables(variables: dict[str, Any], mode: TrainMode) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainable, frozen) for a mode; see the module docstring."""
    if mode == "lora":
        if "lora" not in variables:
            raise ValueError("mode='lora' needs an adapter in variables['lora'] (config.lora_rank > 0)")
        return {"lora": variables["lora"]}, {"params": variables["params"]}
    if mode == "full":
        return {"params": variables["params"]}, {}
    raise ValueError(f"mode: expected one of {TRAIN_MODES}, got {mode!r}")


def init_train_state(variables: dict[str, Any], mode: TrainMode, optimizer: optax.GradientTransformation) -> TrainState:
    trainable, frozen = split_variables(variables, mode)
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen, opt_state=optimizer.init(trainable))


def make_loss_step(loss_fn: Callable[[dict[str, Any], dict[str, Any]], jax.Array],
                   optimizer: optax.GradientTransformation) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted `(state, batch) -> (state, {"loss", "grad_norm"})` for any `loss_fn(variables, batch)`
    (a TrainablePolicy's `train_loss`): only the trainable tree is differentiated."""

    def step(state: TrainState, batch: dict[str, Any]) -> tuple[TrainState, dict[str, jax.Array]]:
        # The frozen base is an input, not an argument of grad: it costs no gradient memory.
        loss, grads = jax.value_and_grad(lambda tr: loss_fn({**state.frozen, **tr}, batch))(state.trainable)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(grads)))
        return new_state, {"loss": loss, "grad_norm": grad_norm}

    return jax.jit(step)


def make_train_step(model: VLAModel, optimizer: optax.GradientTransformation) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """`make_loss_step` with the VLA's flow-matching loss; batch as for flow_matching_loss (noise and
    t included, see `sample_flow_inputs`)."""
    return make_loss_step(partial(flow_matching_loss, model), optimizer)
