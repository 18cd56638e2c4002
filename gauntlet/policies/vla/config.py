"""VLA model configuration: one frozen dataclass and named size presets (no JAX here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gauntlet.data.normalization import NORM_MODES
from gauntlet.keys import ACTION_DIM, STATE_DIM
from gauntlet.policies.base import ModelConfig
from gauntlet.policies.tokenizer import VOCAB_SIZE

# Fields that do not change the parameter tree or what the base computes: an adapter may be
# trained or served with different values, so they are left out of base fingerprints and of the
# adapter-vs-base config check.
NON_ARCHITECTURE_FIELDS = ("preset", "flow_steps", "lora_rank", "lora_alpha", "compute_dtype", "time_beta_a", "time_beta_b")


@dataclass(frozen=True)
class VLAConfig(ModelConfig):
    """A compact pi0-style VLA: image patches + instruction tokens + a proprio token go through a
    transformer trunk; an action expert cross-attends to the trunk and predicts an action chunk by
    flow matching. `to_dict`, `architecture_dict`, `from_dict` and `replace` come from ModelConfig."""

    non_architecture_fields: ClassVar[tuple[str, ...]] = NON_ARCHITECTURE_FIELDS  # see the constant

    preset: str = "tiny"  # name of the preset this config started from (informational only)
    # --- observations ---
    image_size: int = 32  # square camera images, pixels per side; requests must match exactly
    patch_size: int = 8  # ViT patch side in pixels; image_size must be a multiple of it
    num_cameras: int = 2  # 1 = agent view (`observation/image`); 2 = + `observation/wrist_image`
    max_prompt_tokens: int = 32  # byte tokens per instruction incl. BOS/EOS; longer ones are truncated
    state_dim: int = STATE_DIM  # proprio state size (eef pos 3 + axis-angle 3 + gripper 2)
    # --- actions ---
    action_dim: int = ACTION_DIM  # D: action dimensions per step
    chunk_len: int = 8  # H: actions predicted per request
    # --- trunk (vision-language backbone) ---
    width: int = 64  # trunk hidden size
    depth: int = 2  # trunk transformer layers
    num_heads: int = 4  # trunk attention heads (width must be divisible by it)
    mlp_dim: int = 128  # trunk MLP hidden size
    # --- action expert ---
    expert_width: int = 32  # action-expert hidden size (smaller than the trunk, as in pi0)
    expert_depth: int = 2  # action-expert layers (each: self-attn, cross-attn to trunk, MLP)
    expert_heads: int = 2  # action-expert attention heads
    expert_mlp_dim: int = 64  # action-expert MLP hidden size
    # --- flow matching ---
    flow_steps: int = 5  # Euler integration steps at inference (noise at t=1 -> actions at t=0)
    time_beta_a: float = 1.5  # training times t ~ Beta(a, b): pi0's choice, weights noisier t more
    time_beta_b: float = 1.0  # second Beta parameter
    # --- LoRA ---
    lora_rank: int = 8  # adapter rank r on attention q/k/v/o and MLP projections; 0 = no adapters
    lora_alpha: float = 16.0  # adapter scale is alpha / r, so changing r keeps the update size
    # --- numerics ---
    compute_dtype: str = "float32"  # activations/matmuls: "float32" (CPU, tests) or "bfloat16" (GPU)
    norm_mode: str = "quantile"  # how states/actions are normalised: "quantile" or "zscore"

    def __post_init__(self) -> None:
        positive = ("image_size", "patch_size", "max_prompt_tokens", "state_dim", "action_dim", "chunk_len",
                    "width", "depth", "num_heads", "mlp_dim", "expert_width", "expert_depth", "expert_heads",
                    "expert_mlp_dim", "flow_steps")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size: {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_cameras not in (1, 2):
            raise ValueError(f"num_cameras: must be 1 or 2, got {self.num_cameras}")
        if self.width % self.num_heads:
            raise ValueError(f"num_heads: width {self.width} is not divisible by {self.num_heads}")
        if self.expert_width % self.expert_heads:
            raise ValueError(f"expert_heads: expert_width {self.expert_width} is not divisible by {self.expert_heads}")
        if self.max_prompt_tokens < 2:
            raise ValueError("max_prompt_tokens: must be >= 2 (BOS and EOS)")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank: must be >= 0, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha: must be positive, got {self.lora_alpha}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype: must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if self.norm_mode not in NORM_MODES:
            raise ValueError(f"norm_mode: must be one of {NORM_MODES}, got {self.norm_mode!r}")
        if self.time_beta_a <= 0 or self.time_beta_b <= 0:
            raise ValueError("time_beta_a/time_beta_b: must be positive")

    @property
    def patches_per_camera(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def prefix_len(self) -> int:
        """Trunk sequence length: image patches, prompt tokens, one proprio token."""
        return self.num_cameras * self.patches_per_camera + self.max_prompt_tokens + 1

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE


# The preset a fresh VLA is built from when nothing names one (CLI flags, training, serving).
DEFAULT_PRESET = "tiny"

PRESETS: dict[str, VLAConfig] = {
    # CPU tests: a forward pass in a few milliseconds.
    "tiny": VLAConfig(),
    # CPU/GPU experiments: ~10M params, 64 px images.
    "small": VLAConfig(
        preset="small", image_size=64, patch_size=8, max_prompt_tokens=48, width=256, depth=6, num_heads=4,
        mlp_dim=1024, expert_width=128, expert_depth=4, expert_heads=4, expert_mlp_dim=512, lora_rank=16,
        lora_alpha=32.0,
    ),
    # GPU: ViT-B-sized trunk at 224 px / patch 16 (196 patches per camera), half-width action expert.
    "base": VLAConfig(
        preset="base", image_size=224, patch_size=16, max_prompt_tokens=64, width=768, depth=12, num_heads=12,
        mlp_dim=3072, expert_width=384, expert_depth=6, expert_heads=6, expert_mlp_dim=1536, lora_rank=16,
        lora_alpha=32.0, compute_dtype="bfloat16",
    ),
}


def get_config(name: str = DEFAULT_PRESET, **overrides: Any) -> VLAConfig:
    """A preset by name, with field overrides (e.g. `get_config("tiny", num_cameras=1)`)."""
    if name not in PRESETS:
        raise ValueError(f"config_name: unknown preset {name!r} (known: {sorted(PRESETS)})")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
