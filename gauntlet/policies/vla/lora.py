"""LoRA adapter trees: init, merge/unmerge into base params, parameter counts.

An adapter is the model's "lora" collection: a nested dict whose leaves come in pairs
{"a": (in, r), "b": (r, out)} at the same path as the base projection's {"kernel", "bias"}.
It is kept apart from the base params so that many adapters can share one base in memory, be
saved on their own (kilobytes to megabytes instead of the whole model), and be the only argument
a trainer differentiates.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gauntlet.policies.vla.config import VLAConfig
from gauntlet.policies.vla.model import init_variables_numpy, variable_shapes

Tree = dict[str, Any]


def lora_pairs(adapter: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """Yield (path, a, b) for every adapted projection in an adapter tree."""
    if "a" in adapter and "b" in adapter and not isinstance(adapter["a"], Mapping):
        yield path, adapter["a"], adapter["b"]
        return
    for key in sorted(adapter):
        value = adapter[key]
        if isinstance(value, Mapping):
            yield from lora_pairs(value, path + (key,))


def adapter_rank(adapter: Mapping[str, Any]) -> int:
    ranks = {int(np.shape(a)[1]) for _, a, _ in lora_pairs(adapter)}
    if len(ranks) != 1:
        raise ValueError(f"adapter has mixed or no ranks: {sorted(ranks)}")
    return ranks.pop()


def _apply_delta(base: Mapping[str, Any], adapter: Mapping[str, Any], alpha: float, sign: float) -> Tree:
    out = jax.tree_util.tree_map(lambda x: x, dict(base))  # a fresh tree; leaves are shared, never mutated
    for path, a, b in lora_pairs(adapter):
        node = out
        for key in path:
            if key not in node:
                raise KeyError(f"adapter path {'/'.join(path)} has no base projection")
            node[key] = dict(node[key])
            node = node[key]
        kernel = node["kernel"]
        scale = alpha / a.shape[1]
        delta = (jnp.asarray(a, jnp.float32) @ jnp.asarray(b, jnp.float32)) * scale  # (in, out)
        node["kernel"] = (jnp.asarray(kernel, jnp.float32) + sign * delta).astype(kernel.dtype)
    return out


def merge(base: Mapping[str, Any], adapter: Mapping[str, Any], alpha: float) -> Tree:
    """Base params with each adapted kernel replaced by kernel + (alpha / r) * a @ b.

    The merged tree runs without a "lora" collection at the base's speed; use it to export a
    fine-tuned model as a plain base checkpoint.
    """
    return _apply_delta(base, adapter, alpha, 1.0)


def unmerge(merged: Mapping[str, Any], adapter: Mapping[str, Any], alpha: float) -> Tree:
    """Inverse of `merge` (exact up to float32 rounding)."""
    return _apply_delta(merged, adapter, alpha, -1.0)


def count_params(tree: Any) -> int:
    return int(sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree)))


def param_counts(config: VLAConfig) -> dict[str, int]:
    """Trainable parameters: full fine-tuning (every base param) vs LoRA (adapter only)."""
    shapes = variable_shapes(config)
    full = count_params(shapes["params"])
    lora = count_params(shapes.get("lora", {}))
    return {"full": full, "lora": lora, "lora_fraction_ppm": int(round(1e6 * lora / full))}


def init_adapter(config: VLAConfig, seed: int = 0) -> Tree:
    """A fresh adapter (b = 0, so it leaves the base's outputs unchanged) of rank config.lora_rank."""
    if config.lora_rank <= 0:
        raise ValueError("lora_rank: must be > 0 to create an adapter")
    return init_variables_numpy(config, seed, collections=("lora",))["lora"]
