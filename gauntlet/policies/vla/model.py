"""The VLA network (flax.linen) and its two pure functions: flow-matching loss and action sampling.

Variables come in two collections so that LoRA needs no surgery on the tree:
- "params": the base weights (frozen when fine-tuning with LoRA),
- "lora":   the adapter, {path: {"a": (in, r), "b": (r, out)}} mirroring the base path of each
            adapted projection. Applying the model without a "lora" collection runs the base alone
            (no wasted low-rank matmuls); with one, every adapted projection adds (x @ a @ b) * alpha / r.

Flow matching follows pi0: x_t = t * noise + (1 - t) * actions, the network predicts the velocity
u = noise - actions, and sampling Euler-integrates from pure noise at t = 1 down to t = 0.
The trunk runs once per request; only the (smaller) action expert runs at each integration step.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gauntlet.keys import ACTIONS_KEY
from gauntlet.policies.base import masked_chunk_mse
from gauntlet.policies.vla.config import VLAConfig

Array = jax.Array
Variables = dict[str, Any]


def _dtype(config: VLAConfig) -> Any:
    return jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32


class LoRADense(nn.Module):
    """Dense layer with an optional low-rank adapter in the separate "lora" collection."""

    features: int  # output size
    lora_rank: int  # rank created at init (0 = never create an adapter)
    lora_alpha: float  # adapter scale numerator; scale = alpha / r
    dtype: Any = jnp.float32  # compute dtype; params stay float32

    @nn.compact
    def __call__(self, x: Array) -> Array:  # (..., in) -> (..., features)
        in_dim = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_dim, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x = x.astype(self.dtype)
        y = x @ kernel.astype(self.dtype) + bias.astype(self.dtype)
        wants_adapter = self.is_initializing() and self.lora_rank > 0
        if wants_adapter or self.has_variable("lora", "a"):
            # b starts at zero so a fresh adapter is exactly the base model; a gets a small random
            # init so b receives a useful gradient from the first step.
            a = self.variable(
                "lora", "a",
                lambda: nn.initializers.normal(1.0 / math.sqrt(in_dim))(self.make_rng("params"), (in_dim, self.lora_rank)),
            ).value
            b = self.variable("lora", "b", lambda: jnp.zeros((a.shape[1], self.features), jnp.float32)).value
            scale = self.lora_alpha / a.shape[1]
            y = y + ((x @ a.astype(self.dtype)) @ b.astype(self.dtype)) * jnp.asarray(scale, self.dtype)
        return y


class Attention(nn.Module):
    """Multi-head attention with LoRA-able q/k/v/o; queries from x, keys/values from context."""

    num_heads: int
    lora_rank: int
    lora_alpha: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array, context_mask: Array) -> Array:
        # x (B, Tq, W), context (B, Tk, Wc), context_mask (B, Tk) bool: True = attend to this key
        b, tq, w = x.shape
        tk = context.shape[1]
        hd = w // self.num_heads
        dense = dict(lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, dtype=self.dtype)
        q = LoRADense(w, name="q", **dense)(x).reshape(b, tq, self.num_heads, hd)  # (B, Tq, Hh, hd)
        k = LoRADense(w, name="k", **dense)(context).reshape(b, tk, self.num_heads, hd)  # (B, Tk, Hh, hd)
        v = LoRADense(w, name="v", **dense)(context).reshape(b, tk, self.num_heads, hd)  # (B, Tk, Hh, hd)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(hd)  # (B, Hh, Tq, Tk)
        # Softmax in float32: bf16 logits lose the small differences that decide attention.
        logits = jnp.where(context_mask[:, None, None, :], logits, -1e30)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, tq, w)  # (B, Tq, W)
        return LoRADense(w, name="o", **dense)(out)


class MLP(nn.Module):
    hidden: int
    lora_rank: int
    lora_alpha: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:  # (B, T, W) -> (B, T, W)
        dense = dict(lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, dtype=self.dtype)
        h = nn.gelu(LoRADense(self.hidden, name="fc1", **dense)(x))
        return LoRADense(x.shape[-1], name="fc2", **dense)(h)


class TrunkBlock(nn.Module):
    """Pre-LN transformer block with bidirectional self-attention over the prefix."""

    config: VLAConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:  # x (B, T, W), mask (B, T)
        c, dt = self.config, _dtype(self.config)
        lora = dict(lora_rank=c.lora_rank, lora_alpha=c.lora_alpha, dtype=dt)
        h = nn.LayerNorm(dtype=dt, name="ln_attn")(x)
        x = x + Attention(c.num_heads, name="attn", **lora)(h, h, mask)
        h = nn.LayerNorm(dtype=dt, name="ln_mlp")(x)
        return x + MLP(c.mlp_dim, name="mlp", **lora)(h)


class ExpertBlock(nn.Module):
    """Action-expert block: self-attention among action tokens, cross-attention to the trunk, MLP."""

    config: VLAConfig

    @nn.compact
    def __call__(self, x: Array, prefix: Array, prefix_mask: Array) -> Array:
        # x (B, H, We), prefix (B, T, W), prefix_mask (B, T)
        c, dt = self.config, _dtype(self.config)
        lora = dict(lora_rank=c.lora_rank, lora_alpha=c.lora_alpha, dtype=dt)
        all_actions = jnp.ones(x.shape[:2], dtype=bool)  # (B, H): action tokens see each other
        h = nn.LayerNorm(dtype=dt, name="ln_self")(x)
        x = x + Attention(c.expert_heads, name="self_attn", **lora)(h, h, all_actions)
        h = nn.LayerNorm(dtype=dt, name="ln_cross")(x)
        x = x + Attention(c.expert_heads, name="cross_attn", **lora)(h, prefix, prefix_mask)
        h = nn.LayerNorm(dtype=dt, name="ln_mlp")(x)
        return x + MLP(c.expert_mlp_dim, name="mlp", **lora)(h)


def sinusoidal_time_embedding(t: Array, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> Array:
    """t (B,) in [0, 1] -> (B, dim). Periods span pi0's range so both coarse and fine t are resolvable."""
    half = dim // 2
    fraction = jnp.linspace(0.0, 1.0, half)
    period = min_period * (max_period / min_period) ** fraction  # (half,)
    angle = t[:, None] * (2 * math.pi / period)[None, :]  # (B, half)
    emb = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


class VLAModel(nn.Module):
    config: VLAConfig

    def setup(self) -> None:
        c, dt = self.config, _dtype(self.config)
        init = nn.initializers.normal(0.02)
        # Prefix encoders. One patch embedding shared by both cameras (as in pi0's shared SigLIP),
        # with a per-camera position table so the model can still tell the views apart.
        self.patch_embed = nn.Conv(c.width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                                   padding="VALID", dtype=dt, name="patch_embed")
        self.image_pos = self.param("image_pos", init, (c.num_cameras, c.patches_per_camera, c.width))
        self.token_embed = nn.Embed(c.vocab_size, c.width, embedding_init=init, dtype=dt, name="token_embed")
        self.text_pos = self.param("text_pos", init, (c.max_prompt_tokens, c.width))
        self.state_proj = nn.Dense(c.width, dtype=dt, name="state_proj")
        self.trunk = [TrunkBlock(c, name=f"trunk_{i}") for i in range(c.depth)]
        self.trunk_norm = nn.LayerNorm(dtype=dt, name="trunk_norm")
        # Action expert.
        self.action_in = nn.Dense(c.expert_width, dtype=dt, name="action_in")
        self.time_mix_1 = nn.Dense(c.expert_width, dtype=dt, name="time_mix_1")
        self.time_mix_2 = nn.Dense(c.expert_width, dtype=dt, name="time_mix_2")
        self.action_pos = self.param("action_pos", init, (c.chunk_len, c.expert_width))
        self.expert = [ExpertBlock(c, name=f"expert_{i}") for i in range(c.expert_depth)]
        self.expert_norm = nn.LayerNorm(dtype=dt, name="expert_norm")
        self.action_out = nn.Dense(c.action_dim, dtype=dt, name="action_out")

    def encode(self, images: Array, tokens: Array, token_mask: Array, state: Array) -> tuple[Array, Array]:
        """Observation -> trunk features.

        images (B, C, S, S, 3) uint8, tokens (B, L) int32, token_mask (B, L) bool, state (B, Ds)
        normalised float -> prefix (B, T, W), prefix_mask (B, T) with T = C * P + L + 1.
        """
        c = self.config
        b = images.shape[0]
        x = images.astype(jnp.float32) / 127.5 - 1.0  # uint8 -> [-1, 1]
        x = x.reshape((b * c.num_cameras,) + x.shape[2:])  # (B*C, S, S, 3)
        patches = self.patch_embed(x).reshape(b, c.num_cameras, c.patches_per_camera, c.width)  # (B, C, P, W)
        patches = (patches + self.image_pos[None]).reshape(b, c.num_cameras * c.patches_per_camera, c.width)
        text = self.token_embed(tokens) + self.text_pos[None]  # (B, L, W)
        proprio = self.state_proj(state)[:, None, :]  # (B, 1, W)
        prefix = jnp.concatenate([patches.astype(text.dtype), text, proprio.astype(text.dtype)], axis=1)
        mask = jnp.concatenate(
            [jnp.ones(patches.shape[:2], bool), token_mask.astype(bool), jnp.ones((b, 1), bool)], axis=1
        )  # (B, T): only prompt padding is masked
        for block in self.trunk:
            prefix = block(prefix, mask)
        return self.trunk_norm(prefix), mask

    def velocity(self, prefix: Array, prefix_mask: Array, x_t: Array, t: Array) -> Array:
        """prefix (B, T, W), prefix_mask (B, T), noisy actions x_t (B, H, D), time t (B,) -> velocity (B, H, D)."""
        c = self.config
        a = self.action_in(x_t)  # (B, H, We)
        temb = sinusoidal_time_embedding(t, c.expert_width).astype(a.dtype)  # (B, We)
        temb = jnp.broadcast_to(temb[:, None, :], a.shape)  # (B, H, We)
        # pi0's action-time MLP: time enters every action token, not as an extra token.
        x = self.time_mix_2(nn.swish(self.time_mix_1(jnp.concatenate([a, temb], axis=-1))))
        x = x + self.action_pos[None].astype(x.dtype)
        for block in self.expert:
            x = block(x, prefix, prefix_mask)
        return self.action_out(self.expert_norm(x)).astype(jnp.float32)

    def __call__(self, images: Array, tokens: Array, token_mask: Array, state: Array, x_t: Array, t: Array) -> Array:
        prefix, mask = self.encode(images, tokens, token_mask, state)
        return self.velocity(prefix, mask, x_t, t)


# ---------------------------------------------------------------------------------------------
# Pure functions over variables (jit these; the model itself is static).


def dummy_inputs(config: VLAConfig, batch_size: int = 1) -> dict[str, Array]:
    """Zero inputs of the right shapes/dtypes (for init and eval_shape)."""
    c = config
    return {
        "images": jnp.zeros((batch_size, c.num_cameras, c.image_size, c.image_size, 3), jnp.uint8),
        "tokens": jnp.zeros((batch_size, c.max_prompt_tokens), jnp.int32),
        "token_mask": jnp.ones((batch_size, c.max_prompt_tokens), bool),
        "state": jnp.zeros((batch_size, c.state_dim), jnp.float32),
    }


def init_variables(model: VLAModel, rng: Array) -> Variables:
    """{"params": base, "lora": adapter} via flax init (no "lora" when config.lora_rank == 0).

    Used for shapes (under jax.eval_shape); `init_variables_numpy` is what creates real weights.
    """
    c = model.config
    x = dummy_inputs(c)
    noise = jnp.zeros((1, c.chunk_len, c.action_dim), jnp.float32)
    return dict(model.init({"params": rng}, x["images"], x["tokens"], x["token_mask"], x["state"], noise, jnp.zeros((1,))))


def variable_shapes(config: VLAConfig) -> Variables:
    """{"params": ..., "lora": ...} as jax.ShapeDtypeStruct trees, without allocating anything."""
    return jax.eval_shape(lambda: init_variables(VLAModel(config), jax.random.key(0)))


def _init_leaf(collection: str, path: tuple[str, ...], shape: tuple[int, ...], seed: int) -> np.ndarray:
    name = path[-1]
    # One generator per leaf, keyed by its path: a param's init never depends on which other
    # params exist, so adding a layer does not reshuffle the rest.
    rng = np.random.default_rng([seed, zlib.crc32("/".join((collection,) + path).encode())])
    if collection == "lora":
        if name == "b":
            return np.zeros(shape, np.float32)  # zero b: a fresh adapter is exactly the base
        return (rng.standard_normal(shape) / math.sqrt(shape[0])).astype(np.float32)
    if name == "bias":
        return np.zeros(shape, np.float32)
    if name == "scale":
        return np.ones(shape, np.float32)
    if name == "kernel":
        fan_in = int(np.prod(shape[:-1]))  # Dense (in, out) and Conv (kh, kw, cin, out) alike
        return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)  # embeddings and position tables


def init_variables_numpy(config: VLAConfig, seed: int, collections: tuple[str, ...] = ("params", "lora")) -> Variables:
    """Real weights drawn with NumPy from the flax shapes (LeCun-normal kernels, zero biases,
    0.02-normal embeddings, LoRA a ~ N(0, 1/in), b = 0).

    Why not `jax.jit(model.init)`: compiling the init graph (threefry RNG for every leaf) takes
    seconds on CPU and must be redone per config; this takes milliseconds and compiles nothing.
    """
    shapes = variable_shapes(config)
    out: Variables = {}
    for collection in collections:
        if collection not in shapes:
            continue
        out[collection] = jax.tree_util.tree_map_with_path(
            lambda path, s, col=collection: _init_leaf(col, tuple(str(p.key) for p in path), tuple(s.shape), seed),
            shapes[collection],
        )
    return out


def sample_noise(seed: int, noise_seeds: np.ndarray, chunk_len: int, action_dim: int) -> np.ndarray:
    """Per-sample Gaussian noise (B, H, D) float32 keyed by (seed, noise_seed) only.

    Not by batch position or batch size: the same request gets the same actions whether it is
    served alone, padded into a bucket, or batched with strangers. Drawn on the host with NumPy
    because threefry in the graph adds seconds of XLA compile per bucket for (B, 8, 7) numbers.
    """
    noise_seeds = np.asarray(noise_seeds, dtype=np.int64).reshape(-1)
    out = np.empty((noise_seeds.shape[0], chunk_len, action_dim), np.float32)
    for value in np.unique(noise_seeds):
        draw = np.random.default_rng([int(seed) % 2**63, int(value) % 2**63]).standard_normal((chunk_len, action_dim))
        out[noise_seeds == value] = draw.astype(np.float32)
    return out


def sample_actions(
    model: VLAModel, variables: Variables, images: Array, tokens: Array, token_mask: Array, state: Array,
    noise: Array,
) -> Array:
    """Normalised action chunk (B, H, D): Euler-integrate the velocity field from noise (t=1) to t=0."""
    c = model.config
    prefix, mask = model.apply(variables, images, tokens, token_mask, state, method=VLAModel.encode)
    dt = -1.0 / c.flow_steps
    b = images.shape[0]

    def step(i: Array, x: Array) -> Array:
        t = jnp.full((b,), 1.0 + i * dt, jnp.float32)
        return x + dt * model.apply(variables, prefix, mask, x, t, method=VLAModel.velocity)

    return jax.lax.fori_loop(0, c.flow_steps, step, noise.astype(jnp.float32))


def sample_flow_inputs(rng: np.random.Generator, batch_size: int, config: VLAConfig) -> dict[str, np.ndarray]:
    """Training noise (B, H, D) and times t (B,) ~ Beta(a, b), drawn on the host.

    Host-side for the same reason as `sample_noise`: in-graph threefry + Beta (a rejection-sampling
    loop) multiply the train step's compile time, and (B, H, D) numbers cost nothing to transfer.
    t is kept away from 0, where the target would be pure data and the velocity ill-defined.
    """
    noise = rng.standard_normal((batch_size, config.chunk_len, config.action_dim)).astype(np.float32)
    t = rng.beta(config.time_beta_a, config.time_beta_b, size=(batch_size,)) * 0.999 + 0.001
    return {"noise": noise, "t": t.astype(np.float32)}


def flow_matching_loss(model: VLAModel, variables: Variables, batch: dict[str, Array]) -> Array:
    """Mean squared error between predicted and true velocity on normalised actions.

    batch: images, tokens, token_mask, state (normalised), actions (B, H, D) normalised, and the
    flow inputs noise (B, H, D), t (B,) from `sample_flow_inputs`; optional action_mask (B, H)
    (True = a real action, False = padding past the episode end).
    """
    actions = batch[ACTIONS_KEY].astype(jnp.float32)  # (B, H, D)
    noise = batch["noise"].astype(jnp.float32)  # (B, H, D)
    t = batch["t"].astype(jnp.float32)[:, None, None]  # (B, 1, 1)
    x_t = t * noise + (1.0 - t) * actions
    target = noise - actions
    pred = model.apply(variables, batch["images"], batch["tokens"], batch["token_mask"], batch["state"], x_t, batch["t"])
    valid = batch["action_mask"].astype(jnp.float32) if "action_mask" in batch else None  # (B, H)
    return masked_chunk_mse(pred, target, valid)
