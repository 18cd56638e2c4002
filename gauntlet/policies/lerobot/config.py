"""What Gauntlet reads from a LeRobot pretrained directory, without importing LeRobot.

`save_pretrained` writes `config.json` (the policy type and its input/output features),
`model.safetensors` and the processor pipelines (`policy_preprocessor.json`,
`policy_postprocessor.json`). Everything here is plain JSON, so Gauntlet's own process (the eval
driver, `gauntlet serve`) refuses a directory that cannot fit the environment before any replica,
runtime environment or episode starts, naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gauntlet.keys import (
    ACTION_DIM,
    ACTION_FEATURE,
    IMAGE_FEATURE_PREFIX,
    IMAGE_KEY,
    PROMPT_KEY,
    STATE_DIM,
    STATE_FEATURE,
    STATE_KEY,
    WRIST_IMAGE_KEY,
)
from gauntlet.policies.base import FieldSpec, PolicyMetadata
from gauntlet.runtime.config_args import require_at_least

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"

# LeRobot's feature names (lerobot.utils.constants); state and action are keys.py's dataset columns.
LEROBOT_STATE = STATE_FEATURE
LEROBOT_IMAGES_PREFIX = IMAGE_FEATURE_PREFIX
LEROBOT_ACTION = ACTION_FEATURE
LEROBOT_TASK = "task"

# Policy types of lerobot (0.4.4, 0.6.1) this adapter knows how to call in one batch (see policy.py).
SUPPORTED_TYPES = ("act", "diffusion", "pi0", "pi05", "smolvla")
# Types whose preprocessor tokenizes the `task` string: they need the prompt on every request.
LANGUAGE_TYPES = ("pi0", "pi05", "smolvla")
# Flow-matching types: their predict_action_chunk takes the initial noise (`noise`, (B, chunk_size,
# max_action_dim)), which the adapter draws per request from `noise_seed`.
FLOW_TYPES = ("pi0", "pi05", "smolvla")


class LeRobotDirError(ValueError):
    """A directory that is not a LeRobot pretrained policy, or one that cannot drive Gauntlet's env."""

    def __init__(self, path: Path | str, field_name: str, problem: str):
        super().__init__(f"{path}: {field_name}: {problem}")
        self.path = str(path)
        self.field = field_name
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in Ray tasks and replicas: it must unpickle with its three arguments.
        return (type(self), (self.path, self.field, self.problem))


@dataclass(frozen=True)
class LeRobotAdapterConfig:
    """How a LeRobot policy meets Gauntlet's wire keys and environment."""

    # LeRobot camera name (`observation.images.<name>`) -> Gauntlet wire key. robosuite's agent-view
    # and wrist cameras arrive as these two keys; a policy trained on other names maps them here.
    cameras: dict[str, str] = field(default_factory=lambda: {"agentview": IMAGE_KEY, "wrist": WRIST_IMAGE_KEY})
    state_dim: int = STATE_DIM  # Gauntlet's proprio state
    action_dim: int = ACTION_DIM  # Gauntlet's action
    device: str = "cpu"  # torch device of the replica ("cuda" when the deployment has a GPU)
    # Diffusion/flow policies draw noise: each request's chunk uses noise from this seed, so a
    # request's answer does not depend on which batch it joined (and equals a one-by-one call).
    noise_seed: int = 0
    # Episodes whose select_action state (observation history, action queue, ACT's ensemble) a
    # replica of a stateful policy keeps (episode_state.py), least recently asked evicted first: well
    # above the episodes one replica serves at once (rollout actors x their envs). Diffusion's history
    # is n_obs_steps normalised frames per camera (2 x 2 x 84 px x float32: 0.3 MB an episode).
    max_episodes: int = 256

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError("cameras: map at least one LeRobot camera name to a wire key")
        require_at_least(self, 1, "state_dim", "action_dim", "max_episodes")


@dataclass(frozen=True)
class PretrainedSpec:
    """The parts of a saved LeRobot config Gauntlet needs (derived, never hand-written)."""

    path: str  # the pretrained directory
    policy_type: str  # "act", "diffusion", ...
    state_dim: int  # observation.state shape[0]
    action_dim: int  # action shape[0]
    chunk_len: int  # actions per request: n_action_steps, or 1 with episode_state (one request per env step)
    n_obs_steps: int  # observation history length the model takes (1 for most types)
    # Whether select_action keeps per-episode state beyond the action queue, so that a chunk per request
    # cannot reproduce it: Diffusion's observation history (n_obs_steps > 1), ACT's temporal ensemble.
    episode_state: bool
    cameras: dict[str, tuple[int, int, int]]  # LeRobot camera name -> (C, H, W)
    uses_language: bool  # whether `task` (Gauntlet's prompt) is an input

    def metadata(self, adapter: LeRobotAdapterConfig, version: str = "") -> PolicyMetadata:
        """Gauntlet's metadata: images at the size the policy was trained on, (H, W, 3) uint8."""
        spec: dict[str, FieldSpec] = {STATE_KEY: FieldSpec((self.state_dim,), "float32")}
        for cam, (_, height, width) in self.cameras.items():
            spec[adapter.cameras[cam]] = FieldSpec((height, width, 3), "uint8")
        if self.uses_language:
            spec[PROMPT_KEY] = FieldSpec((), "str")
        return PolicyMetadata(
            name="lerobot", version=version or f"{self.policy_type}:{Path(self.path).name}",
            action_dim=self.action_dim, chunk_len=self.chunk_len, observation_spec=spec,
            needs_images=bool(self.cameras), episode_memory=self.episode_state,
            extra={"lerobot_type": self.policy_type, "pretrained_dir": self.path,
                   "cameras": {cam: adapter.cameras[cam] for cam in self.cameras},
                   **({"max_episodes": adapter.max_episodes} if self.episode_state else {})},
        )


def _features(cfg: dict[str, Any], key: str, cfg_path: Path) -> dict[str, dict[str, Any]]:
    features = cfg.get(key)
    if not isinstance(features, dict):
        raise LeRobotDirError(cfg_path, key, "missing or not a map of features (not a LeRobot policy config)")
    return features


def _require_vector(features: dict[str, Any], group: str, key: str, dim: int, what: str, cfg_path: Path) -> None:
    """`group.key` must be present with shape (dim,): the environment's state or action size."""
    if key not in features:
        raise LeRobotDirError(cfg_path, f"{group}.{key}", f"missing: Gauntlet's {what} is {dim}-d")
    shape = _shape(features[key], cfg_path, f"{group}.{key}")
    if shape != (dim,):
        raise LeRobotDirError(cfg_path, f"{group}.{key}.shape",
                              f"{list(shape)} does not match the environment's {what} ({dim},)")


def _shape(feature: Any, cfg_path: Path, name: str) -> tuple[int, ...]:
    if not isinstance(feature, dict) or not isinstance(feature.get("shape"), list):
        raise LeRobotDirError(cfg_path, name, "feature without a shape")
    return tuple(int(s) for s in feature["shape"])


def _chunk_len(cfg: dict[str, Any], cfg_path: Path) -> int:
    """Actions per request: `n_action_steps` (what LeRobot's select_action executes per chunk)."""
    steps = cfg.get("n_action_steps")
    if not isinstance(steps, int) or steps < 1:
        raise LeRobotDirError(cfg_path, "n_action_steps", f"expected a positive integer, got {steps!r}")
    return steps


def _episode_state(cfg: dict[str, Any], policy_type: str) -> bool:
    """Whether select_action carries state from one env step to the next that a fresh policy per
    chunk would lose (read from LeRobot 0.4.4/0.6.1's modeling_act.py and modeling_diffusion.py; the
    pi family's and SmolVLA's select_action keep only the action queue, which a chunk reproduces)."""
    if policy_type == "diffusion":
        return int(cfg.get("n_obs_steps", 1) or 1) > 1
    return policy_type == "act" and cfg.get("temporal_ensemble_coeff") is not None


def read_pretrained(path: str | Path, adapter: LeRobotAdapterConfig | None = None) -> PretrainedSpec:
    """Reads and checks `path`; LeRobotDirError names the file and field of the first problem."""
    adapter = adapter or LeRobotAdapterConfig()
    root = Path(path)
    if not root.is_dir():
        raise LeRobotDirError(root, "<directory>", "does not exist or is not a directory")
    cfg_path = root / CONFIG_FILE
    for name in (CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_FILE, POSTPROCESSOR_FILE):
        if not (root / name).is_file():
            raise LeRobotDirError(root / name, "<file>", "missing: not a LeRobot pretrained directory "
                                  "(save it with policy.save_pretrained and the processors' save_pretrained)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LeRobotDirError(cfg_path, "<json>", f"unreadable: {exc}") from None
    policy_type = cfg.get("type")
    if policy_type not in SUPPORTED_TYPES:
        raise LeRobotDirError(cfg_path, "type", f"{policy_type!r} is not supported (supported: {SUPPORTED_TYPES})")
    inputs = _features(cfg, "input_features", cfg_path)
    outputs = _features(cfg, "output_features", cfg_path)
    _require_vector(inputs, "input_features", LEROBOT_STATE, adapter.state_dim, "state", cfg_path)
    _require_vector(outputs, "output_features", LEROBOT_ACTION, adapter.action_dim, "action", cfg_path)
    cameras: dict[str, tuple[int, int, int]] = {}
    for name, feature in inputs.items():
        if name == LEROBOT_STATE:
            continue
        if not name.startswith(LEROBOT_IMAGES_PREFIX):
            raise LeRobotDirError(cfg_path, f"input_features.{name}",
                                  "Gauntlet's environment provides no such observation (state and cameras only)")
        cam = name[len(LEROBOT_IMAGES_PREFIX):]
        if cam not in adapter.cameras:
            raise LeRobotDirError(cfg_path, f"input_features.{name}",
                                  f"camera {cam!r} has no wire key; map it (cameras: {sorted(adapter.cameras)})")
        shape = _shape(feature, cfg_path, f"input_features.{name}")
        if len(shape) != 3 or shape[0] != 3:
            raise LeRobotDirError(cfg_path, f"input_features.{name}.shape", f"{list(shape)} is not (3, H, W)")
        cameras[cam] = (shape[0], shape[1], shape[2])
    episode_state = _episode_state(cfg, policy_type)
    chunk_len = _chunk_len(cfg, cfg_path)  # checked either way: select_action reads it
    return PretrainedSpec(
        path=str(root.resolve()), policy_type=policy_type, state_dim=adapter.state_dim, action_dim=adapter.action_dim,
        chunk_len=1 if episode_state else chunk_len, n_obs_steps=int(cfg.get("n_obs_steps", 1) or 1),
        episode_state=episode_state, cameras=cameras, uses_language=policy_type in LANGUAGE_TYPES,
    )
