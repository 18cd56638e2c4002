"""Per-device training memory, planned before the first step (no JAX here; NumPy only).

A full fine-tune keeps, per data-parallel device: the parameters, a gradient for every parameter,
AdamW's two moments, an optional EMA copy, and the activations saved for the backward pass. LoRA
keeps the same frozen parameters and activations (the backward still flows through the frozen
layers to reach the adapters) but gradients, moments and EMA only for the adapter, which is why it
fits where a full fine-tune does not. The planner adds these up from the model config, compares the
total with the device's memory, and either picks a mode (`auto`) or refuses a `full` run with the
numbers and the LoRA command, before any worker starts.

Activation bytes are an analytic estimate of what a transformer keeps for backward (per layer:
residual stream, norms, q/k/v/o, attention scores and probabilities, MLP hidden pre/post
activation), times `ACTIVATION_SLACK` for XLA's workspace. `benchmarks/bench_train.py` prints the
estimate next to XLA's own compiled memory analysis of the real train step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gauntlet.policies.vla.config import VLAConfig

GiB = 1024**3
PARAM_BYTES = 4  # parameters, gradients and optimizer moments are kept in float32
ADAM_MOMENTS = 2  # AdamW keeps mu and nu per trainable parameter
# XLA workspace, fusion temporaries and the step's second copy of the trainable state (inputs and
# outputs both live: the step does not donate buffers, since the frozen base is shared with the
# serving policy) on top of the saved activations. Calibrated with benchmarks/bench_train.py: XLA's
# compiled peak (arguments + outputs + temporaries) of the tiny and small train steps is 1.43-1.72x
# the analytic activation bytes plus state; 1.8 keeps the plan at or above XLA's own number.
ACTIVATION_SLACK = 1.8
# What the device keeps for itself (allocator pools, runtime, compiled programs).
RESERVED_FRACTION = 0.10

MODES = ("lora", "full", "auto")


class MemoryPlanError(ValueError):
    """The requested training does not fit the device; the message gives numbers and the fix."""


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per device for one mode."""

    mode: str  # "lora" or "full"
    params: int  # every parameter the forward pass reads (frozen base + adapter)
    grads: int  # gradients: trainable parameters only
    optimizer: int  # AdamW moments: trainable parameters only
    ema: int  # EMA copy of the trainable parameters (0 when EMA is off)
    activations: int  # saved activations at the per-device batch size, with workspace slack
    trainable_params: int  # count of parameters that receive gradients
    total_params: int  # count of parameters the model reads

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.ema + self.activations

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}

    def describe(self) -> str:
        parts = [("params", self.params), ("grads", self.grads), ("optimizer", self.optimizer),
                 ("EMA", self.ema), ("activations", self.activations)]
        return f"{fmt_bytes(self.total)} = " + " + ".join(f"{name} {fmt_bytes(v)}" for name, v in parts)


@dataclass(frozen=True)
class MemoryPlan:
    """Both modes' needs against one device, and the mode chosen."""

    requested_mode: str  # what the user asked for: lora, full or auto
    mode: str  # what will run: lora or full
    device_bytes: int  # usable bytes per device (after RESERVED_FRACTION)
    device_source: str  # where device_bytes came from (flag, GPU, host RAM)
    batch_per_device: int  # samples per device per step
    full: MemoryBreakdown  # needs of a full fine-tune
    lora: MemoryBreakdown | None  # needs of LoRA (None when the model has no adapters, rank 0)

    @property
    def chosen(self) -> MemoryBreakdown:
        return self.full if self.mode == "full" else self.lora  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {"requested_mode": self.requested_mode, "mode": self.mode, "device_bytes": self.device_bytes,
                "device_source": self.device_source, "batch_per_device": self.batch_per_device,
                "full": self.full.to_dict(), "lora": self.lora.to_dict() if self.lora else None}

    def table(self) -> str:
        rows = [f"memory plan (per device, batch {self.batch_per_device}; device {fmt_bytes(self.device_bytes)} "
                f"from {self.device_source})"]
        for b in (self.full, self.lora):
            if b is None:
                continue
            fits = "fits" if b.total <= self.device_bytes else "DOES NOT FIT"
            mark = "*" if b.mode == self.mode else " "
            rows.append(f" {mark} {b.mode:<4} {b.describe()}  [{fits}; {b.trainable_params:,} trainable "
                        f"of {b.total_params:,}]")
        return "\n".join(rows)


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _dtype_bytes(name: str) -> int:
    return 2 if name == "bfloat16" else 4


def activation_elements_per_sample(c: VLAConfig) -> int:
    """Elements saved for backward by one sample's forward pass (see the module docstring)."""
    t = c.prefix_len  # trunk tokens
    h_len = c.chunk_len  # action tokens
    # Trunk layer: x, ln1, q, k, v, attn-out, o-proj, ln2 (8 T W) + scores and probs (2 heads T^2)
    # + MLP hidden before and after the activation (2 T M).
    trunk = c.depth * (8 * t * c.width + 2 * c.num_heads * t * t + 2 * t * c.mlp_dim)
    # Expert layer: self-attention over H tokens, cross-attention from H to T (its k/v project the
    # whole prefix: 2 T We), MLP.
    we = c.expert_width
    expert = c.expert_depth * (
        12 * h_len * we + 2 * t * we + 2 * c.expert_heads * (h_len * h_len + h_len * t) + 2 * h_len * c.expert_mlp_dim
    )
    # Patch embedding input (float copy of the images) and the prefix embeddings.
    embed = c.num_cameras * c.image_size * c.image_size * 3 + 3 * t * c.width
    return int(trunk + expert + embed)


def breakdown(config: VLAConfig, mode: str, batch_per_device: int, *, ema: bool = False,
              param_counts: dict[str, int] | None = None) -> MemoryBreakdown:
    """Bytes per device for `mode` ("lora" or "full"). `param_counts` ({"full", "lora"}) skips the
    shape evaluation when the caller already has them."""
    if mode not in ("lora", "full"):
        raise ValueError(f"mode: expected 'lora' or 'full', got {mode!r}")
    if param_counts is None:
        from gauntlet.policies.vla.lora import param_counts as count

        param_counts = count(config)
    base, adapter = int(param_counts["full"]), int(param_counts.get("lora", 0))
    if mode == "lora" and adapter <= 0:
        raise MemoryPlanError("mode: lora needs a model with adapters (lora_rank > 0)")
    trainable = adapter if mode == "lora" else base
    total_params = base + (adapter if mode == "lora" else 0)
    acts = activation_elements_per_sample(config) * batch_per_device * _dtype_bytes(config.compute_dtype)
    return MemoryBreakdown(
        mode=mode,
        params=total_params * PARAM_BYTES,
        grads=trainable * PARAM_BYTES,
        optimizer=ADAM_MOMENTS * trainable * PARAM_BYTES,
        ema=trainable * PARAM_BYTES if ema else 0,
        activations=int(acts * ACTIVATION_SLACK),
        trainable_params=trainable,
        total_params=total_params,
    )


def device_memory(device_memory_gb: float = 0.0, workers_per_node: int = 1) -> tuple[int, str]:
    """(usable bytes per device, where the number came from).

    An explicit size wins (plan for a GPU you do not have on this host). Otherwise the first local
    accelerator's limit as JAX reports it, else this host's available RAM shared by the workers
    that run on it (CPU training keeps everything in host memory).
    """
    if device_memory_gb > 0:
        return int(device_memory_gb * GiB * (1 - RESERVED_FRACTION)), f"--device-memory-gb {device_memory_gb:g}"
    try:
        import jax

        dev = jax.local_devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            limit = int(stats.get("bytes_limit", 0))
            if limit:
                return int(limit * (1 - RESERVED_FRACTION)), f"{dev.platform} device {dev.device_kind}"
    except Exception:  # noqa: BLE001 - no accelerator runtime: plan for host memory
        pass
    import psutil

    avail = psutil.virtual_memory().available // max(1, workers_per_node)
    return int(avail * (1 - RESERVED_FRACTION)), f"host RAM available / {max(1, workers_per_node)} worker(s)"


def plan(config: VLAConfig, requested_mode: str, batch_per_device: int, *, device_bytes: int,
         device_source: str = "given", ema: bool = False, lora_command: str = "") -> MemoryPlan:
    """Pick or check the mode. Raises MemoryPlanError for a `full` (or `auto`/`lora`) run that
    cannot fit, naming every term and what to run instead."""
    if requested_mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {requested_mode!r}")
    if batch_per_device < 1:
        raise ValueError(f"batch_size: at least one sample per device, got {batch_per_device}")
    from gauntlet.policies.vla.lora import param_counts as count

    counts = count(config)
    full = breakdown(config, "full", batch_per_device, ema=ema, param_counts=counts)
    lora = breakdown(config, "lora", batch_per_device, ema=ema, param_counts=counts) if counts.get("lora") else None

    def build(mode: str) -> MemoryPlan:
        return MemoryPlan(requested_mode, mode, device_bytes, device_source, batch_per_device, full, lora)

    if requested_mode == "full":
        if full.total <= device_bytes:
            return build("full")
        msg = (f"full fine-tuning does not fit: it needs {full.describe()} per device at batch "
               f"{batch_per_device}, but the device has {fmt_bytes(device_bytes)} ({device_source}).")
        if lora is not None and lora.total <= device_bytes:
            msg += (f" LoRA trains {lora.trainable_params:,} instead of {full.trainable_params:,} parameters and "
                    f"needs {lora.describe()}, which fits. Run: {lora_command or 'the same command with --mode lora'}")
        else:
            msg += " Lower --batch-size (activations scale with it) or use a device with more memory."
        raise MemoryPlanError(msg)
    if requested_mode == "auto":
        if full.total <= device_bytes:
            return build("full")
        if lora is not None and lora.total <= device_bytes:
            return build("lora")
        raise MemoryPlanError(f"neither mode fits {fmt_bytes(device_bytes)} ({device_source}): full needs "
                              f"{full.describe()}; lora needs {lora.describe() if lora else 'n/a (rank 0)'}. "
                              "Lower --batch-size.")
    if lora is None:
        raise MemoryPlanError("mode: lora needs a model with adapters (lora_rank > 0)")
    if lora.total > device_bytes:
        raise MemoryPlanError(f"LoRA does not fit: it needs {lora.describe()} per device at batch "
                              f"{batch_per_device}, but the device has {fmt_bytes(device_bytes)} ({device_source}). "
                              "Lower --batch-size.")
    return build("lora")
