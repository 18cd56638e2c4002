"""Policy names -> constructors. `NAME[=CHECKPOINT]` is how the CLI and configs name a policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gauntlet.policies.base import Policy

POLICY_NAMES = ("random", "scripted", "bc_rnn", "vla", "lerobot")
# Policies `gauntlet eval` runs in-process in each rollout actor unless told to deploy them
# (`deploy=NAME`): they cost less than a round trip to a replica (the scripted oracle is privileged
# and plans by simulation, random is a draw), so serving them would only add overhead.
LOCAL_BY_DEFAULT = frozenset({"random", "scripted"})


class UnknownPolicyError(ValueError):
    def __init__(self, name: str):
        super().__init__(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
        self.name = name


@dataclass(frozen=True)
class PolicyRef:
    """A policy named on the command line: `vla`, `vla=ckpt/dir`, `scripted`."""

    name: str  # registry name
    checkpoint: str | None = None  # checkpoint directory, if any

    @classmethod
    def parse(cls, text: str) -> PolicyRef:
        name, _, ckpt = text.partition("=")
        name = name.strip()
        if name not in POLICY_NAMES:
            raise UnknownPolicyError(name)
        return cls(name, ckpt.strip() or None)


def make_policy(name: str, checkpoint: str | None = None, **kwargs: Any) -> Policy:
    """Builds a policy. Heavy frameworks are imported here, only for the policy asked for."""
    if name == "random":
        from gauntlet.policies.random_policy import RandomPolicy

        return RandomPolicy(**kwargs)
    if name == "scripted":
        from gauntlet.policies.scripted_policy import ScriptedPolicy

        return ScriptedPolicy(**kwargs)
    if name == "bc_rnn":
        from gauntlet.policies.bc_rnn.policy import BCRNNPolicy

        return BCRNNPolicy.load(checkpoint) if checkpoint else BCRNNPolicy.create(**kwargs)
    if name == "vla":
        from gauntlet.policies.vla.policy import VLAPolicy

        return VLAPolicy.load(checkpoint) if checkpoint else VLAPolicy.create(**kwargs)
    if name == "lerobot":
        from gauntlet.policies.lerobot.config import LeRobotAdapterConfig
        from gauntlet.policies.lerobot.policy import LeRobotPolicy

        if not checkpoint:
            raise ValueError("lerobot: name a pretrained directory: --policy lerobot=DIR")
        return LeRobotPolicy(checkpoint, LeRobotAdapterConfig(**kwargs))
    raise UnknownPolicyError(name)


def check_checkpoint(ref: PolicyRef, **kwargs: Any) -> PolicyRef:
    """Refuses, before anything is deployed, a checkpoint that cannot serve Gauntlet's environment, and
    returns the ref replicas should load (a LeRobot directory made absolute: replicas run elsewhere).

    Only families whose checks need no heavy import run here (the caller's process may lack them)."""
    if ref.name == "lerobot":
        from gauntlet.policies.lerobot.config import LeRobotAdapterConfig, read_pretrained

        if not ref.checkpoint:
            raise ValueError("lerobot: name a pretrained directory: --policy lerobot=DIR")
        # LeRobotDirError (a ValueError) names the file and the field.
        return PolicyRef(ref.name, read_pretrained(ref.checkpoint, LeRobotAdapterConfig(**kwargs)).path)
    return ref


def runtime_env_for(name: str) -> dict[str, Any] | None:
    """The Ray runtime_env a family's replicas need (None: Gauntlet's own environment): families whose
    libraries pin versions Gauntlet's stack does not have run in their own, never in Gauntlet's."""
    if name == "lerobot":
        from gauntlet.policies.lerobot.environment import runtime_env

        return runtime_env()
    return None
