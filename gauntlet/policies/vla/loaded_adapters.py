"""A VLAPolicy's loaded LoRA adapters: what one holds, the error for a missing one, and one adapter
as a standalone Policy (a view sharing the base)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gauntlet.data.normalization import NormStats

if TYPE_CHECKING:
    from gauntlet.policies.vla.policy import VLAPolicy


class AdapterNotFoundError(LookupError):
    """`infer(..., adapter=name)` for an adapter that is not loaded."""


@dataclass(frozen=True)
class LoadedAdapter:
    """One adapter held by a VLAPolicy beside its shared base."""

    name: str  # the name requests select it by
    params: dict[str, Any]  # device arrays, rescaled to the policy's lora_alpha
    norm_stats: NormStats  # used for this adapter's requests (fine-tunes bring their data's stats)
    rank: int  # LoRA rank: adapters of one rank share the compiled executables
    source: str | None  # the checkpoint dir it came from, if any

    @property
    def variant(self) -> str:
        return f"lora-r{self.rank}"


class VLAAdapterView:
    """One adapter of a shared VLAPolicy, as a standalone Policy (e.g. per multiplexed model id)."""

    def __init__(self, policy: VLAPolicy, adapter: str | None):
        self.policy = policy
        self.adapter = adapter
        base = policy.metadata
        self.metadata = dataclasses.replace(
            base, name=base.name if adapter is None else f"{base.name}:{adapter}",
            extra={**base.extra, "adapter": adapter},
        )

    def infer(self, batch: Mapping[str, Any], seed: int | None = None) -> dict[str, Any]:
        return self.policy.infer(batch, adapter=self.adapter, seed=seed)

    def reset(self) -> None:
        self.policy.reset()
