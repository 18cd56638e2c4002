"""VLAPolicy: the VLA behind the Policy protocol, with bucketed compilation and LoRA adapters.

- Raw in, raw out: states are normalised and actions unnormalised inside `infer` with the
  checkpoint's (or the adapter's) statistics.
- Bucketed compilation: a batch is padded to the next bucket (1, 2, 4, ..., max_batch_size) and run
  by an ahead-of-time compiled executable for that bucket; `warmup()` compiles every bucket so no
  request ever waits on XLA. `compile_count` counts compilations so this can be checked.
- Adapters: `load_adapter(name, dir)` keeps only the small adapter tree; every adapter shares the
  one base in memory and, having the same shapes for a given rank, the same executables.
- Determinism: actions depend only on (observation, adapter, seed, noise_seed), never on batch
  size, padding or position in the batch (see `model.sample_noise`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gauntlet.data.normalization import NormStats
from gauntlet.keys import ACTIONS_KEY, STATE_KEY
from gauntlet.policies.base import PolicyMetadata, image_spec, state_spec
from gauntlet.policies.checkpoints import (
    CONFIG_FILE,
    CheckpointFormatError,
    fingerprint,
    load_checkpoint,
    load_model_checkpoint,
    read_manifest,
    save_checkpoint,
    tree_shapes,
)
from gauntlet.policies.tokenizer import ByteTokenizer
from gauntlet.policies.vla import lora as lora_lib
from gauntlet.policies.vla.config import DEFAULT_PRESET, VLAConfig, get_config
from gauntlet.policies.vla.executables import SHARED_EXECUTABLES, bucket_sizes, clear_executable_cache
from gauntlet.policies.vla.inputs import NOISE_SEED_KEY, model_inputs
from gauntlet.policies.vla.loaded_adapters import AdapterNotFoundError, LoadedAdapter, VLAAdapterView
from gauntlet.policies.vla.model import (
    VLAModel,
    flow_matching_loss,
    init_variables_numpy,
    sample_actions,
    sample_flow_inputs,
    sample_noise,
)

Tree = dict[str, Any]
# Re-exported: callers import these from here.
__all__ = ["NOISE_SEED_KEY", "AdapterNotFoundError", "VLAAdapterView", "VLAPolicy", "bucket_sizes",
           "clear_executable_cache"]


def _as_float32(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=np.float32), _to_numpy(tree))


def _to_numpy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)


class VLAPolicy:
    """A pi0-style VLA implementing `gauntlet.policies.base.Policy`."""

    def __init__(
        self,
        config: VLAConfig,
        params: Tree,
        norm_stats: NormStats | None = None,
        *,
        name: str = "vla",
        version: str | None = None,
        seed: int = 0,
        max_batch_size: int = 16,
    ):
        self.config = config
        self.model = VLAModel(config)
        self.tokenizer = ByteTokenizer(config.max_prompt_tokens)
        self.norm_stats = norm_stats or NormStats.identity(config.state_dim, config.action_dim)
        self.norm_stats.check_dims({STATE_KEY: config.state_dim, ACTIONS_KEY: config.action_dim})
        expected = tree_shapes(lora_lib.variable_shapes(config)["params"])
        if tree_shapes(params) != expected:
            raise ValueError("params: tree does not match the config's parameter shapes")
        # float32 storage whatever the checkpoint held: executables are shared per config and
        # expect exactly these dtypes (compute_dtype decides the matmul precision, not storage).
        self._params: Tree = jax.device_put(_as_float32(params))
        self._fingerprint = fingerprint(config.architecture_dict(), _to_numpy(params))
        self._name = name
        self._version = version or f"{config.preset}-{self._fingerprint[:10]}"
        self.seed = seed  # default sampling seed: fixed, so repeated calls are reproducible
        self._max_batch_size = max_batch_size
        self._adapters: dict[str, LoadedAdapter] = {}
        self._compiled: dict[tuple[str, int], Any] = {}
        self._compile_count = 0
        self._warm_variants: set[str] = set()  # variants whose buckets must stay compiled
        self._lock = threading.RLock()
        self._sample = jax.jit(partial(sample_actions, self.model))
        self._loss = jax.jit(partial(flow_matching_loss, self.model))
        self.metadata = self._make_metadata()

    # ---------------------------------------------------------------- construction / persistence

    @classmethod
    def create(cls, config_name: str = DEFAULT_PRESET, seed: int = 0, *, norm_stats: NormStats | None = None,
               max_batch_size: int = 16, name: str = "vla", **config_overrides: Any) -> VLAPolicy:
        """A randomly initialised policy from a preset (`config_overrides` replace config fields)."""
        config = get_config(config_name, **config_overrides)
        params = init_variables_numpy(config, seed, collections=("params",))["params"]
        return cls(config, params, norm_stats, name=name, seed=seed, max_batch_size=max_batch_size)

    @classmethod
    def load(cls, checkpoint_dir: str | Path, *, seed: int = 0, max_batch_size: int = 16, name: str = "vla") -> VLAPolicy:
        """A base checkpoint (see gauntlet.policies.checkpoints); every file is validated."""
        checkpoint_dir = Path(checkpoint_dir)
        config, ckpt = load_model_checkpoint(
            checkpoint_dir, VLAConfig.from_dict, lambda c: tree_shapes(lora_lib.variable_shapes(c)["params"]))
        policy = cls(config, ckpt.params, ckpt.norm_stats, name=name, seed=seed, max_batch_size=max_batch_size,
                     version=ckpt.extra.get("version"))
        return policy

    def save(self, checkpoint_dir: str | Path) -> Path:
        """Write the base (params, config, norm stats) as a checkpoint directory."""
        return save_checkpoint(
            checkpoint_dir, kind="base", model_config=self.config.to_dict(), params=_to_numpy(self._params),
            norm_stats=self.norm_stats, fingerprint_value=self._fingerprint,
            extra={"name": self._name, "version": self._version},
        )

    @property
    def base_fingerprint(self) -> str:
        """Digest of the base architecture + weights; adapters record it and are checked against it."""
        return self._fingerprint

    @property
    def params(self) -> Tree:
        """The base params (device arrays; treat as read-only)."""
        return self._params

    def variables(self, adapter: str | None = None) -> Tree:
        """{"params": base} or {"params": base, "lora": adapter} (what the model functions take)."""
        if adapter is None:
            return {"params": self._params}
        return {"params": self._params, "lora": self._get_adapter(adapter).params}

    # ---------------------------------------------------------------- adapters

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(sorted(self._adapters))

    def init_adapter(self, seed: int = 0, rank: int | None = None) -> Tree:
        """A fresh zero-effect adapter (b = 0) for this base."""
        config = self.config.replace(lora_rank=rank) if rank else self.config
        return lora_lib.init_adapter(config, seed)

    def add_adapter(self, name: str, params: Tree, *, norm_stats: NormStats | None = None,
                    alpha: float | None = None, source: str | None = None) -> None:
        """Register an adapter tree under `name` (replacing one of the same name)."""
        rank = lora_lib.adapter_rank(params)
        expected = tree_shapes(lora_lib.variable_shapes(self.config.replace(lora_rank=rank))["lora"])
        if tree_shapes(params) != expected:
            raise ValueError(f"adapter {name!r}: tree does not match this base's projections at rank {rank}")
        stats = norm_stats or self.norm_stats
        stats.check_dims({STATE_KEY: self.config.state_dim, ACTIONS_KEY: self.config.action_dim})
        params = jax.device_put(_as_float32(params))
        if alpha is not None and alpha != self.config.lora_alpha:
            # The model scales by config.lora_alpha / r; fold the adapter's own alpha into b so
            # the update it was trained to apply is exactly the one served.
            ratio = float(alpha) / self.config.lora_alpha
            params = jax.tree_util.tree_map_with_path(
                lambda path, x: x * ratio if getattr(path[-1], "key", None) == "b" else x, params
            )
        adapter = LoadedAdapter(name=name, params=params, norm_stats=stats, rank=rank, source=source)
        with self._lock:
            self._adapters[name] = adapter
            self.metadata = self._make_metadata()
            if self._warm_variants:
                # After warmup no request may wait on a compile, so a new rank compiles now.
                self._compile_variant(adapter.variant, self.variables(name))
                self._warm_variants.add(adapter.variant)

    def load_adapter(self, name: str, adapter_dir: str | Path) -> None:
        """Load an adapter checkpoint onto this base; rejects adapters trained on another base."""
        adapter_dir = Path(adapter_dir)
        manifest = read_manifest(adapter_dir)
        cfg = manifest["model_config"]
        rank, alpha = cfg.get("lora_rank"), cfg.get("lora_alpha")
        if not isinstance(rank, int) or rank <= 0 or not isinstance(alpha, int | float):
            raise CheckpointFormatError(adapter_dir / CONFIG_FILE, "adapter model_config needs lora_rank > 0 and lora_alpha")
        expected = tree_shapes(lora_lib.variable_shapes(self.config.replace(lora_rank=rank))["lora"])
        ckpt = load_checkpoint(
            adapter_dir, expected_kind="adapter", expected_config=self.config.architecture_dict(),
            expected_shapes=expected, base_fingerprint=self.base_fingerprint,
        )
        self.add_adapter(name, ckpt.params, norm_stats=ckpt.norm_stats, alpha=float(alpha), source=str(adapter_dir))

    def save_adapter(self, name: str, adapter_dir: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
        """Write one adapter (only its own params + norm stats + the base fingerprint)."""
        adapter = self._get_adapter(name)
        config = self.config.replace(lora_rank=adapter.rank)
        return save_checkpoint(
            adapter_dir, kind="adapter", model_config=config.to_dict(), params=_to_numpy(adapter.params),
            norm_stats=adapter.norm_stats, base_fingerprint=self.base_fingerprint,
            extra={"name": name, **dict(extra or {})},
        )

    def remove_adapter(self, name: str) -> None:
        with self._lock:
            self._adapters.pop(name, None)
            self.metadata = self._make_metadata()

    def with_adapter(self, name: str | None) -> VLAAdapterView:
        """A Policy that serves this base with one adapter (None = the base)."""
        if name is not None:
            self._get_adapter(name)
        return VLAAdapterView(self, name)

    def _get_adapter(self, name: str) -> LoadedAdapter:
        try:
            return self._adapters[name]
        except KeyError:
            raise AdapterNotFoundError(f"adapter {name!r} is not loaded (loaded: {list(self.adapters)})") from None

    # ---------------------------------------------------------------- compilation

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @property
    def buckets(self) -> tuple[int, ...]:
        return bucket_sizes(self._max_batch_size)

    @property
    def compile_count(self) -> int:
        """Executables compiled so far (each (variant, bucket) compiles at most once)."""
        return self._compile_count

    @property
    def compiled_buckets(self) -> tuple[int, ...]:
        """Bucket sizes compiled for the base (no adapter)."""
        return tuple(sorted(b for v, b in self._compiled if v == "base"))

    @property
    def compiled_programs(self) -> tuple[tuple[str, int], ...]:
        """Every compiled (variant, bucket): variant is "base" or "lora-r{rank}"."""
        return tuple(sorted(self._compiled))

    def bucket_for(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def warmup(self, max_batch_size: int | None = None) -> tuple[tuple[str, int], ...]:
        """Compile every bucket up to max_batch_size for the base and each loaded adapter rank."""
        with self._lock:
            if max_batch_size is not None:
                self._max_batch_size = int(max_batch_size)
                self.metadata = self._make_metadata()
            self._warm_variants.add("base")
            self._compile_variant("base", self.variables(None))
            for adapter in self._adapters.values():
                self._warm_variants.add(adapter.variant)
                self._compile_variant(adapter.variant, self.variables(adapter.name))
        return self.compiled_programs

    def _compile_variant(self, variant: str, variables: Tree) -> None:
        for bucket in self.buckets:
            self._executable(variant, bucket, variables)

    def _executable(self, variant: str, bucket: int, variables: Tree) -> Any:
        key = (variant, bucket)
        exe = self._compiled.get(key)
        if exe is not None:
            return exe
        with self._lock:
            shared = SHARED_EXECUTABLES.get((self.config, variant, bucket))
            if shared is not None:
                self._compiled[key] = shared
            if key not in self._compiled:
                c = self.config
                args = (
                    jax.ShapeDtypeStruct((bucket, c.num_cameras, c.image_size, c.image_size, 3), jnp.uint8),
                    jax.ShapeDtypeStruct((bucket, c.max_prompt_tokens), jnp.int32),
                    jax.ShapeDtypeStruct((bucket, c.max_prompt_tokens), jnp.bool_),
                    jax.ShapeDtypeStruct((bucket, c.state_dim), jnp.float32),
                    jax.ShapeDtypeStruct((bucket, c.chunk_len, c.action_dim), jnp.float32),
                )
                # Ahead-of-time: an executable for exactly these shapes, so a call can never
                # silently retrace; params are arguments, not constants, so adapters swap freely.
                self._compiled[key] = self._sample.lower(variables, *args).compile()
                SHARED_EXECUTABLES[(self.config, variant, bucket)] = self._compiled[key]
                self._compile_count += 1
            return self._compiled[key]

    # ---------------------------------------------------------------- inference

    def prepare(self, batch: Mapping[str, Any], norm_stats: NormStats | None = None,
                with_actions: bool = False) -> dict[str, np.ndarray]:
        """Raw batch -> model inputs (NumPy); see `inputs.model_inputs`."""
        return model_inputs(self.config, self.tokenizer, batch, norm_stats or self.norm_stats, with_actions)

    def infer(self, batch: Mapping[str, Any], adapter: str | None = None, seed: int | None = None) -> dict[str, Any]:
        """Raw batch (B leading) -> {"actions": (B, H, D) float32 raw scale, "policy_timing": {...}}.

        adapter: a loaded adapter's name, or None for the base. seed: sampling seed (default the
        policy's); add `noise_seed` (B,) to the batch to vary noise per request.
        """
        t0 = time.perf_counter()
        ad = self._get_adapter(adapter) if adapter is not None else None
        stats = ad.norm_stats if ad is not None else self.norm_stats
        variant = ad.variant if ad is not None else "base"
        variables = self.variables(adapter)
        x = self.prepare(batch, stats)
        b = x["state"].shape[0]
        c = self.config
        noise = sample_noise(self.seed if seed is None else int(seed), x["noise_seed"], c.chunk_len, c.action_dim)
        chunks, buckets = [], []
        for start in range(0, b, self._max_batch_size):
            n = min(self._max_batch_size, b - start)
            bucket = self.bucket_for(n)
            buckets.append(bucket)
            idx = np.arange(start, start + n)
            # Pad by repeating the last real row: padding rows are valid inputs, so they cannot
            # produce NaNs, and since noise is per-sample their results are simply dropped.
            idx = np.concatenate([idx, np.full((bucket - n,), start + n - 1)])
            exe = self._executable(variant, bucket, variables)
            out = exe(variables, x["images"][idx], x["tokens"][idx], x["token_mask"][idx], x["state"][idx], noise[idx])
            chunks.append(np.asarray(out)[:n])
        normed = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, c.chunk_len, c.action_dim), np.float32)
        actions = stats.unnormalize(ACTIONS_KEY, normed, c.norm_mode).astype(np.float32)
        timing = {"infer_ms": (time.perf_counter() - t0) * 1e3, "batch_size": b, "buckets": buckets}
        return {ACTIONS_KEY: actions, "policy_timing": timing}

    def reset(self) -> None:
        """No per-episode state: actions depend only on the observation and seeds."""

    # ---------------------------------------------------------------- training

    def prepare_train_batch(self, batch: Mapping[str, Any], rng: np.random.Generator | int,
                            norm_stats: NormStats | None = None) -> dict[str, np.ndarray]:
        """Raw batch with `actions` -> normalised model inputs + flow-matching noise and t."""
        x = self.prepare(batch, norm_stats, with_actions=True)
        x.pop("noise_seed")
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        x.update(sample_flow_inputs(gen, x["state"].shape[0], self.config))
        return x

    def train_weights(self, mode: str, seed: int) -> Tree:
        """TrainablePolicy: the variables a trainer starts from: the base, plus (mode "lora") a fresh
        adapter drawn from `seed`."""
        variables: Tree = {"params": self._params}
        if mode == "lora":
            variables["lora"] = self.init_adapter(seed)
        return variables

    def train_loss(self, weights: Tree, batch: Mapping[str, Any]) -> jax.Array:
        """TrainablePolicy: the flow-matching loss of a prepared batch (pure in `weights`: jit it)."""
        return flow_matching_loss(self.model, weights, batch)

    def loss(self, variables: Tree | None, batch: Mapping[str, Any], rng: np.random.Generator | int = 0,
             norm_stats: NormStats | None = None) -> float:
        """Flow-matching MSE on a raw batch with `actions` (B, H, D); variables default to the base.
        Same rng -> same noise and t, so two parameter sets can be compared on equal terms."""
        x = self.prepare_train_batch(batch, rng, norm_stats)
        return float(self._loss(variables or self.variables(None), x))

    # ---------------------------------------------------------------- metadata

    def _make_metadata(self) -> PolicyMetadata:
        c = self.config
        spec = {**image_spec(c.image_size, wrist=c.num_cameras == 2), **state_spec()}
        return PolicyMetadata(
            name=self._name, version=self._version, action_dim=c.action_dim, chunk_len=c.chunk_len,
            observation_spec=spec, needs_images=True, privileged=False,
            extra={
                "model": "vla", "preset": c.preset, "base_fingerprint": self._fingerprint,
                "adapters": list(self.adapters), "buckets": list(self.buckets), "flow_steps": c.flow_steps,
                "norm_mode": c.norm_mode,
            },
        )

