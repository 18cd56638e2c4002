"""The built-in policy families, each declared once (see `registry.PolicyFamily`).

The hooks below import their family's code when called, so that importing this module (to list
families, parse `--policy`) imports no framework.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gauntlet.policies.base import Policy
from gauntlet.policies.registry import PolicyFamily, PolicyRef, ServingOptions, register_family

_HERE = __name__  # hooks below are named "gauntlet.policies.families:function"
LEROBOT_DIR_REQUIRED = "lerobot: name a pretrained directory: --policy lerobot=DIR"


def build_random(checkpoint: str | None, **kwargs: Any) -> Policy:
    from gauntlet.policies.random_policy import RandomPolicy

    return RandomPolicy(**kwargs)


def build_scripted(checkpoint: str | None, **kwargs: Any) -> Policy:
    from gauntlet.policies.scripted_policy import ScriptedPolicy

    return ScriptedPolicy(**kwargs)


def build_bc_rnn(checkpoint: str | None, **kwargs: Any) -> Policy:
    from gauntlet.policies.bc_rnn.policy import BCRNNPolicy

    return BCRNNPolicy.load(checkpoint) if checkpoint else BCRNNPolicy.create(**kwargs)


def build_vla(checkpoint: str | None, **kwargs: Any) -> Policy:
    from gauntlet.policies.vla.policy import VLAPolicy

    return VLAPolicy.load(checkpoint) if checkpoint else VLAPolicy.create(**kwargs)


def vla_serving_kwargs(ref: PolicyRef, options: ServingOptions) -> dict[str, Any]:
    """Without a checkpoint, the VLA is built from the preset `--vla-size` names (the VLA's default if none)."""
    from gauntlet.policies.vla.config import DEFAULT_PRESET

    return {} if ref.checkpoint else {"config_name": options.preset or DEFAULT_PRESET}


def build_lerobot(checkpoint: str | None, **kwargs: Any) -> Policy:
    from gauntlet.policies.lerobot.config import LeRobotAdapterConfig
    from gauntlet.policies.lerobot.policy import LeRobotPolicy

    if not checkpoint:
        raise ValueError(LEROBOT_DIR_REQUIRED)
    return LeRobotPolicy(checkpoint, LeRobotAdapterConfig(**kwargs))


def lerobot_preflight(ref: PolicyRef, **kwargs: Any) -> PolicyRef:
    """Reads the pretrained directory's config (no torch): a checkpoint whose features cannot serve
    Gauntlet's environment is refused naming the file and field (LeRobotDirError). The directory is
    made absolute, because replicas run elsewhere. (Whether the chosen LeRobot release can parse the
    config is the family's env_check, run in that release's environment.)"""
    from gauntlet.policies.lerobot.config import LeRobotAdapterConfig, read_pretrained

    if not ref.checkpoint:
        raise ValueError(LEROBOT_DIR_REQUIRED)
    return replace(ref, checkpoint=read_pretrained(ref.checkpoint, LeRobotAdapterConfig(**kwargs)).path)


def lerobot_serving_kwargs(ref: PolicyRef, options: ServingOptions) -> dict[str, Any]:
    """On a GPU replica LeRobot places the model and its processors on that device."""
    return {"device": "cuda"} if options.num_gpus else {}


# Random and scripted run in each rollout actor by default: they cost less than a round trip to a
# replica (the scripted oracle is privileged and plans by simulation, random is a draw).
register_family(PolicyFamily(
    name="random", summary="uniform random actions, the floor", factory=f"{_HERE}:build_random",
    local_by_default=True))
register_family(PolicyFamily(
    name="scripted", summary="privileged scripted oracle", factory=f"{_HERE}:build_scripted",
    local_by_default=True))
register_family(PolicyFamily(
    name="bc_rnn", summary="recurrent behaviour cloning, torch", factory=f"{_HERE}:build_bc_rnn"))
register_family(PolicyFamily(
    name="vla", summary="vision-language-action model, JAX; LoRA adapters", factory=f"{_HERE}:build_vla",
    serving_kwargs=f"{_HERE}:vla_serving_kwargs", abilities=frozenset({"warmup", "adapters", "compile_count"})))
register_family(PolicyFamily(
    name="lerobot", summary="a LeRobot pretrained directory, =DIR; own runtime_env", factory=f"{_HERE}:build_lerobot",
    preflight=f"{_HERE}:lerobot_preflight", serving_kwargs=f"{_HERE}:lerobot_serving_kwargs",
    runtime_env="gauntlet.policies.lerobot.environment:runtime_env",
    env_check="gauntlet.policies.lerobot.release_check:check_config"))
