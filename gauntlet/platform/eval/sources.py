"""How a rollout actor reaches a policy: a Serve DeploymentHandle, a remote URL, or in-process.

All three present the same `ChunkSource` face to `run_episode`. The Serve client retries while a
replica is being restarted, so a replica crash costs latency, not episodes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from gauntlet.keys import SIM_STATE_KEY
from gauntlet.platform.eval.episode import ChunkSource, PolicyUnavailableError
from gauntlet.platform.eval.openpi import RemoteOptions, check_answer, effective_metadata, remote_contract
from gauntlet.platform.eval.targets import PolicyTarget
from gauntlet.policies.base import PolicyMetadata, stack_observations


class _SourceBase:
    """What every source learns from the policy's metadata (the `ChunkSource` attributes)."""

    replan_steps: int = 0  # actions executed per chunk before asking again; 0 = the whole chunk
    pad_images: bool = False  # resize images with padding (openpi's clients) rather than plain resize

    def _set_metadata(self, meta: PolicyMetadata) -> None:
        spec = meta.observation_spec
        self.spec_keys = frozenset(spec)
        # Image sizes the policy expects: the actor resizes its renders to them.
        self.image_shapes = {k: v.shape for k, v in spec.items() if v.is_image}
        self.needs_images = meta.needs_images
        self.needs_sim_state = SIM_STATE_KEY in spec
        self.chunk_len = meta.chunk_len or 1


class ServeSource(_SourceBase):
    def __init__(self, app: str, deployment: str, retry_s: float = 120.0, adapter: str = ""):
        from ray import serve

        self.handle = serve.get_deployment_handle(deployment, app_name=app)
        self.adapter = adapter or None
        # Multiplexed id: Serve routes an adapter's requests to replicas that already hold it.
        self._infer_handle = self.handle.options(multiplexed_model_id=adapter) if adapter else self.handle
        self.retry_s = retry_s
        self._set_metadata(PolicyMetadata.from_dict(self._call(lambda: self.handle.metadata.remote().result())))

    def _call(self, fn: Any) -> Any:
        deadline = time.monotonic() + self.retry_s
        delay = 0.2
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - replica restarting: retry within the budget
                if time.monotonic() > deadline:
                    raise PolicyUnavailableError(f"policy unavailable for {self.retry_s:.0f} s: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        out = self._call(lambda: self._infer_handle.infer.remote(obs, self.adapter).result())
        if "error" in out:
            raise PolicyUnavailableError(f"policy answered an error: {out['error']}")
        return np.asarray(out["actions"])


class RemoteSource(_SourceBase):
    """An openpi-protocol server: sent the contract's observation, every answer checked.

    A lost connection is retried within the connect budget (the server restarted); an answer that
    is not an action chunk fails the episode with RemoteAnswerError naming what the server sent.
    """

    def __init__(self, url: str, options: RemoteOptions | None = None):
        from gauntlet.policies.remote import RemoteConnectionError, RemotePolicy

        self.options = options or RemoteOptions()
        self.url = url
        self._retry_on = RemoteConnectionError
        try:
            self.policy = RemotePolicy(url, api_key=self.options.api_key or None, timeout_s=self.options.timeout_s,
                                       connect_retry_s=self.options.connect_s)
        except RemoteConnectionError as exc:
            raise PolicyUnavailableError(str(exc)) from None
        self.contract = remote_contract(self.policy.metadata, self.options, url)
        self._set_metadata(effective_metadata(self.policy.metadata, self.contract))
        # A spec-less (openpi) server gets exactly what openpi's LIBERO client sends, images padded.
        self.pad_images = not self.contract.declared

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        if not self.contract.declared:
            obs = {k: v for k, v in obs.items() if k in self.contract.spec}
        deadline = time.monotonic() + self.options.connect_s
        while True:
            try:
                answer = self.policy.infer_one(obs)
                break
            except self._retry_on as exc:
                if time.monotonic() > deadline:
                    raise PolicyUnavailableError(f"{self.url}: {exc}") from None
                time.sleep(0.5)
        return check_answer(answer, self.url, self.contract)


class LocalSource(_SourceBase):
    def __init__(self, name: str, checkpoint: str | None = None, policy: Any = None):
        from gauntlet.policies.registry import make_policy
        from gauntlet.policies.validation import validate_observation

        self.policy = policy if policy is not None else make_policy(name, checkpoint)
        self._validate = validate_observation
        self._set_metadata(self.policy.metadata)

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        obs = self._validate(obs, self.policy.metadata.observation_spec)
        return self.policy.infer(stack_observations([obs]))["actions"][0]


def make_source(target: PolicyTarget) -> ChunkSource:
    """The source an actor uses for `target` (in-process `LocalSource`s are built directly, by benchmarks)."""
    source: ChunkSource
    if target.kind == "serve":
        source = ServeSource(target.app, target.deployment, adapter=target.adapter)
    elif target.kind == "remote":
        source = RemoteSource(target.url, target.remote)
    else:
        raise ValueError(f"unknown policy target kind {target.kind!r}")
    source.replan_steps = target.replan_steps
    return source
