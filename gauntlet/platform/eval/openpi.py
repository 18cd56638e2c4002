"""Evaluating a policy served elsewhere: openpi's `WebsocketPolicyServer` or any openpi-protocol server.

openpi's server announces `{}` as its metadata unless its user configures one, so a spec-less server
is sent what openpi's own LIBERO client sends: `observation/image`, `observation/wrist_image` (resized
with padding to `--remote-image-size`, uint8 HxWx3), `observation/state` (8 floats) and `prompt`.
A server that declares an `observation_spec` gets exactly that spec. What the user declares on the
command line (`--remote-action-dim`, `--remote-chunk-len`) fills in what the metadata leaves out.

Before any episode counts, the driver probes every remote target once (`probe`): the server must be
reachable within the retry budget and its first answer must carry `actions` of the environment's
action dimension; otherwise the run stops before anything is written, naming the server and what it
sent. Rollout actors check every later answer the same way (`check_answer`). What a server may send
or declare is bounded by the client (`policies.remote`: message size, declared shapes); past those
bounds the probe fails the same way, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gauntlet.keys import ACTION_DIM, ACTIONS_KEY, EPISODE_ID_KEY, PROMPT_KEY
from gauntlet.policies.base import FieldSpec, PolicyMetadata, image_spec, state_spec
from gauntlet.policies.remote import MAX_DECLARED_SIZE

DEFAULT_IMAGE_SIZE = 224  # what openpi's pi0 / pi0.5 checkpoints are trained at (its clients' resize_size)
API_KEY_ENV = "GAUNTLET_REMOTE_API_KEY"  # default environment variable holding the remote API key


class RemoteAnswerError(RuntimeError):
    """A remote server answered something that is not an action chunk for this environment."""


class RemoteContractError(ValueError):
    """What a remote server declares contradicts the environment or the user's declaration."""


@dataclass(frozen=True)
class RemoteOptions:
    """How the evaluator talks to remote targets (from `--remote-*` flags; shipped to the actors)."""

    image_size: int = DEFAULT_IMAGE_SIZE  # camera size for servers that declare no observation spec
    action_dim: int = 0  # the user's declaration when the metadata has none (0: the environment's)
    chunk_len: int = 0  # the user's declaration when the metadata has none (0: whatever it returns)
    connect_s: float = 30.0  # retry budget for reaching the server (connect + metadata, reconnects)
    timeout_s: float = 120.0  # longest wait for one answer (a first JAX call may compile for a while)
    # From an environment variable, never from the config: run.json must not hold it; repr=False
    # keeps it out of logs that print a target.
    api_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class RemoteContract:
    """What the evaluator sends one remote server and what it expects back."""

    spec: dict[str, FieldSpec]  # keys (and shapes) each request carries
    declared: bool  # the server declared its spec (else openpi's LIBERO observation is sent)
    action_dim: int  # the last dimension every answer must have
    chunk_len: int  # actions per answer; 0 = any length


def openpi_spec(image_size: int) -> dict[str, FieldSpec]:
    """The observation openpi's LIBERO client sends: both cameras, the 8-d state, the prompt."""
    return {**image_spec(image_size, wrist=True), **state_spec()}


def remote_contract(meta: PolicyMetadata, options: RemoteOptions, url: str) -> RemoteContract:
    """The server's declarations where it makes them, the user's where it does not; contradictions
    (with the environment or between the two) raise RemoteContractError naming the field."""
    for name, server, user in (("action_dim", meta.action_dim, options.action_dim),
                               ("chunk_len", meta.chunk_len, options.chunk_len)):
        if server and user and server != user:
            raise RemoteContractError(f"{url}: the server declares {name}={server} but --remote-"
                                      f"{name.replace('_', '-')} is {user}")
    action_dim = meta.action_dim or options.action_dim or ACTION_DIM
    if action_dim != ACTION_DIM:
        raise RemoteContractError(f"{url}: action_dim {action_dim} (declared by the "
                                  f"{'server' if meta.action_dim else 'user'}) but the environment's actions "
                                  f"have {ACTION_DIM} values")
    declared = bool(meta.observation_spec)
    if not declared and not 1 <= options.image_size <= MAX_DECLARED_SIZE:
        raise RemoteContractError(f"--remote-image-size {options.image_size}: expected 1 to {MAX_DECLARED_SIZE}")
    spec = dict(meta.observation_spec) if declared else openpi_spec(options.image_size)
    return RemoteContract(spec=spec, declared=declared, action_dim=action_dim,
                          chunk_len=meta.chunk_len or options.chunk_len)


def effective_metadata(meta: PolicyMetadata, contract: RemoteContract) -> PolicyMetadata:
    """The server's metadata completed by the contract (what the actor's source is built from)."""
    return replace(meta, observation_spec=contract.spec, action_dim=contract.action_dim,
                   chunk_len=contract.chunk_len,
                   needs_images=any(v.is_image for v in contract.spec.values()))


def resize_with_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """openpi_client.image_tools.resize_with_pad for one HxWx3 uint8 image: scale to fit keeping the
    aspect ratio (PIL bilinear), then centre it on a black canvas of (height, width)."""
    from PIL import Image

    cur_h, cur_w = image.shape[:2]
    if (cur_h, cur_w) == (height, width):
        return image
    ratio = max(cur_w / width, cur_h / height)
    new_w, new_h = int(cur_w / ratio), int(cur_h / ratio)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), resample=Image.BILINEAR)
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, (max(0, (width - new_w) // 2), max(0, (height - new_h) // 2)))
    return np.asarray(canvas)


def describe(answer: Any, limit: int = 200) -> str:
    """A short account of what a server sent: keys with shapes and dtypes, or the value's type."""
    if isinstance(answer, dict):
        parts = []
        for key, value in answer.items():
            arr = value if isinstance(value, np.ndarray) else None
            parts.append(f"{key!s}: {arr.dtype}{list(arr.shape)}" if arr is not None else f"{key!s}: {value!r:.40}")
        text = "{" + ", ".join(parts) + "}"
    else:
        text = f"{type(answer).__name__} {answer!r:.80}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_answer(answer: Any, url: str, contract: RemoteContract) -> np.ndarray:
    """The (H, D) chunk of a server's answer; RemoteAnswerError naming the server and what it sent."""
    if not isinstance(answer, dict) or ACTIONS_KEY not in answer:
        raise RemoteAnswerError(f"{url} answered without '{ACTIONS_KEY}': it sent {describe(answer)}")
    try:
        actions = np.asarray(answer[ACTIONS_KEY], dtype=np.float64)
    except (TypeError, ValueError):
        raise RemoteAnswerError(f"{url} sent non-numeric actions: {describe(answer)}") from None
    if actions.ndim != 2 or actions.shape[-1] != contract.action_dim or not len(actions):
        raise RemoteAnswerError(f"{url} sent actions of shape {list(actions.shape)}; expected (H, "
                                f"{contract.action_dim}): one chunk of the environment's {contract.action_dim}-d "
                                f"actions")
    if contract.chunk_len and len(actions) != contract.chunk_len:
        raise RemoteAnswerError(f"{url} sent a chunk of {len(actions)} actions; its declared chunk length "
                                f"is {contract.chunk_len}")
    if not np.isfinite(actions).all():
        raise RemoteAnswerError(f"{url} sent non-finite actions")
    return actions


def probe_observation(contract: RemoteContract, prompt: str) -> dict[str, Any]:
    """A request shaped exactly as the actors' will be (zeros for arrays, the task's prompt)."""
    obs: dict[str, Any] = {}
    for key, spec in contract.spec.items():
        if key == PROMPT_KEY or spec.dtype == "str":
            obs[key] = prompt
        else:  # unknown sizes (-1) become 1: the probe checks the answer, not the server's model
            obs[key] = np.zeros(tuple(max(1, d) for d in spec.shape), dtype=spec.dtype)
    obs.setdefault(PROMPT_KEY, prompt)
    if contract.declared:
        obs[EPISODE_ID_KEY] = "probe"
    return obs


def probe(url: str, options: RemoteOptions, prompt: str) -> RemoteContract:
    """Connects (within the retry budget), reads the metadata and checks one answer.

    Raises RemotePolicyError (unreachable, refused, errored), RemoteContractError or RemoteAnswerError.
    """
    from gauntlet.policies.remote import RemotePolicy

    policy = RemotePolicy(url, api_key=options.api_key or None, timeout_s=options.timeout_s,
                          connect_retry_s=options.connect_s)
    try:
        contract = remote_contract(policy.metadata, options, url)
        check_answer(policy.infer_one(probe_observation(contract, prompt)), url, contract)
        return contract
    finally:
        policy.close()

