"""The `--policy` grammar of `gauntlet eval`: each TARGET becomes a PolicyTarget (where an actor finds
the policy) and, for policies this job deploys, one serving spec per policy name.

    NAME[=CHECKPOINT]        deployed on Serve by this job (app EVAL_APP), except families whose
                             entry says `local_by_default` (cheap ones: scripted, random), which run
                             in-process in each rollout actor (no network hop, like a serial loop)
    deploy=NAME[=CHECKPOINT] deployed on Serve by this job, whatever the policy (e.g. deploy=scripted)
    NAME=BASE@ADAPTER_DIR    a LoRA adapter on that base, served by the base's deployment (families
                             that serve adapters, e.g. vla)
    serve=NAME[@ADAPTER]     an already running `gauntlet serve` app (APP_NAME)
    remote=ws://...|http://  an openpi-protocol policy server (`--remote-*` flags: what it is sent)

`--replan-steps K` / `LABEL=K` sets, per target, how many actions of each chunk run before the
policy is asked again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from gauntlet.deployments.app import APP_NAME, EVAL_APP, deployment_name
from gauntlet.platform.eval.config import EvalConfig, EvalConfigError
from gauntlet.platform.eval.openpi import RemoteOptions

if TYPE_CHECKING:
    from gauntlet.deployments.app import PolicyServing

REMOTE_SCHEMES = ("ws://", "wss://", "http://", "https://")
# Where an actor finds a target's policy: a Serve deployment, an openpi-protocol server, or its own process.
TargetKind = Literal["serve", "remote", "local"]


@dataclass(frozen=True)
class PolicyTarget:
    """Where a policy lives, in a form that can be shipped to an actor (plain strings)."""

    label: str  # results column value
    kind: TargetKind  # "local": in-process in each rollout actor
    policy: str = ""  # registry NAME[=CHECKPOINT] (kind=local)
    app: str = ""  # Serve application (kind=serve)
    deployment: str = ""  # Serve deployment (kind=serve)
    url: str = ""  # endpoint (kind=remote)
    adapter: str = ""  # LoRA adapter the deployment serves by name (kind=serve; "" = the base)
    replan_steps: int = 0  # actions executed per chunk before asking again; 0 = the whole chunk
    remote: RemoteOptions | None = None  # how to talk to it (kind=remote)

    def __post_init__(self) -> None:
        if self.kind not in get_args(TargetKind):
            raise ValueError(f"PolicyTarget {self.label!r}: kind {self.kind!r} is not one of {get_args(TargetKind)}")


def policy_targets(cfg: EvalConfig) -> tuple[list[PolicyTarget], list[PolicyServing]]:
    """(targets for the actors, serving specs this job must deploy under EVAL_APP).

    `NAME=BASE@ADAPTER_DIR` (e.g. `vla=BASE@ADAPTER_DIR`) evaluates a LoRA adapter: the base is deployed once, with the adapter's
    parent directory as its adapters directory, and requests name the adapter (Serve multiplexing),
    so `--policy vla=BASE --policy vla=BASE@adapters/d1` compares a base and its fine-tune on one
    replica. The adapter's label is `vla@d1`.
    """
    from gauntlet.policies.registry import PolicyRef

    targets: list[PolicyTarget] = []
    deploy: dict[str, PolicyServing] = {}  # policy name -> spec (one deployment per policy name)
    for text in cfg.policy:
        kind, _, rest = text.partition("=")
        if kind == "remote":
            if not rest.startswith(REMOTE_SCHEMES):
                raise EvalConfigError(f"remote={rest!r}: give a ws:// or http:// URL")
            target = PolicyTarget(label=f"remote:{rest}", kind="remote", url=rest, remote=remote_options(cfg))
        elif kind == "serve":
            name, _, adapter = rest.partition("@")
            PolicyRef.parse(name)
            target = PolicyTarget(label=rest, kind="serve", app=APP_NAME, deployment=deployment_name(name),
                                  adapter=adapter)
        elif kind == "deploy":
            target = _deployed_target(cfg, rest, deploy)
        else:
            target = _local_target(text) or _deployed_target(cfg, text, deploy)
        if any(t.label == target.label for t in targets):
            raise EvalConfigError(f"policy {target.label!r} is named twice")
        targets.append(target)
    steps = replan_steps(cfg, targets)
    return [replace(t, replan_steps=steps.get(t.label, 0)) for t in targets], list(deploy.values())


def remote_options(cfg: EvalConfig) -> RemoteOptions:
    """The `--remote-*` flags, plus the API key from its environment variable (never from the config,
    which run.json records)."""
    return RemoteOptions(image_size=cfg.remote_image_size, action_dim=cfg.remote_action_dim,
                         chunk_len=cfg.remote_chunk_len, connect_s=cfg.remote_connect_s,
                         timeout_s=cfg.remote_timeout_s, api_key=os.environ.get(cfg.remote_api_key_env, ""))


def replan_steps(cfg: EvalConfig, targets: list[PolicyTarget]) -> dict[str, int]:
    """policy label -> K from `--replan-steps` items `K` (every policy) and `LABEL=K` (one policy,
    named by its label or its --policy text; the last `=` splits, so URLs may hold `=`)."""
    names = {t.label: t.label for t in targets} | dict(zip(cfg.policy, (t.label for t in targets), strict=True))
    default, own = 0, {}
    for text in cfg.replan_steps:
        name, _, number = text.rpartition("=")
        try:
            k = int(number)
        except ValueError:
            raise EvalConfigError(f"--replan-steps {text!r}: give K or LABEL=K with K a whole number") from None
        if k < 1:
            raise EvalConfigError(f"--replan-steps {text!r}: K must be >= 1")
        if not name:
            default = k
        elif name in names:
            own[names[name]] = k
        else:
            raise EvalConfigError(f"--replan-steps {text!r}: no policy {name!r} (policies: {sorted(set(names))})")
    return {t.label: own.get(t.label, default) for t in targets}


def policy_tasks(cfg: EvalConfig, targets: list[PolicyTarget]) -> dict[str, frozenset[str]]:
    """policy label -> the only tasks it is evaluated on, from `--policy-tasks LABEL=TASK` items
    (repeatable; LABEL as for --replan-steps). Policies not named run on every task."""
    from gauntlet.envs.tasks import TASKS

    names = {t.label: t.label for t in targets} | dict(zip(cfg.policy, (t.label for t in targets), strict=True))
    allowed: dict[str, set[str]] = {}
    for text in cfg.policy_tasks:
        name, _, task = text.rpartition("=")
        if name not in names:
            raise EvalConfigError(f"--policy-tasks {text!r}: no policy {name!r} (policies: {sorted(set(names))})")
        if task not in TASKS:
            raise EvalConfigError(f"--policy-tasks {text!r}: unknown task {task!r} (tasks: {sorted(TASKS)})")
        allowed.setdefault(names[name], set()).add(task)
    return {label: frozenset(tasks) for label, tasks in allowed.items()}


def _local_target(text: str) -> PolicyTarget | None:
    """`NAME` of a family that runs in the actors by default; None for every other text (unknown
    names are reported by the deployed path, with the same message)."""
    from gauntlet.policies.registry import PolicyRef, policy_family

    try:
        ref = PolicyRef.parse(text)
    except ValueError:
        return None
    if not policy_family(ref.name).local_by_default or ref.checkpoint or "@" in text:
        return None
    return PolicyTarget(label=ref.name, kind="local", policy=ref.name)


def _deployed_target(cfg: EvalConfig, text: str, deploy: dict[str, PolicyServing]) -> PolicyTarget:
    """`NAME[@RELEASE][=CHECKPOINT][@ADAPTER_DIR]`: adds (or merges) its serving spec into `deploy`."""
    from gauntlet.deployments.app import specs_from_names
    from gauntlet.policies.registry import families, policy_family, split_adapter

    try:
        base_text, adapter_path = split_adapter(text)
        spec = specs_from_names([base_text], replicas=cfg.replicas, max_batch_size=cfg.max_batch_size,
                                batch_wait_timeout_s=cfg.batch_wait_timeout_s, vla_size=cfg.vla_size)[0]
    except ValueError as exc:
        raise EvalConfigError(str(exc)) from None
    if spec.ref.checkpoint and not Path(spec.ref.checkpoint).exists():
        raise EvalConfigError(f"{text}: checkpoint {spec.ref.checkpoint} does not exist")
    adapter = ""
    if adapter_path:
        adapter_dir = Path(adapter_path).resolve()
        if not policy_family(spec.ref.name).serves_adapters:
            serving = [f.name for f in families().values() if f.serves_adapters]
            raise EvalConfigError(f"{text}: adapters are for the {', '.join(serving)} policy")
        if not (adapter_dir / "config.json").is_file():
            raise EvalConfigError(f"{text}: {adapter_path} is not an adapter checkpoint directory")
        adapter = adapter_dir.name
        spec = replace(spec, adapters_dir=str(adapter_dir.parent))
    previous = deploy.get(spec.ref.name)
    if previous is not None:
        if previous.ref != spec.ref:
            raise EvalConfigError(f"{text}: policy {spec.ref.name!r} is already deployed from "
                                  f"{previous.ref.checkpoint or 'a fresh preset'}; one base per policy name")
        if spec.adapters_dir and previous.adapters_dir and spec.adapters_dir != previous.adapters_dir:
            raise EvalConfigError(f"{text}: adapters of one base must share a parent directory "
                                  f"({previous.adapters_dir} vs {spec.adapters_dir})")
        spec = replace(previous, adapters_dir=previous.adapters_dir or spec.adapters_dir)
    deploy[spec.ref.name] = spec
    label = f"{spec.ref.name}@{adapter}" if adapter else spec.ref.name
    return PolicyTarget(label=label, kind="serve", app=EVAL_APP, deployment=deployment_name(spec.ref.name),
                        adapter=adapter)
