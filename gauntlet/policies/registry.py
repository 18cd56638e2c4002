"""Policy names -> constructors. `NAME[=CHECKPOINT]` is how the CLI and configs name a policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gauntlet.policies.base import Policy

POLICY_NAMES = ("random", "scripted", "bc_rnn", "vla")


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
    raise UnknownPolicyError(name)
