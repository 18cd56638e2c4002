"""The `--policy` grammar of `gauntlet eval`: each TARGET becomes a PolicyTarget (where an actor finds
the policy) and, for policies this job deploys, one serving spec per policy name.

    NAME[=CHECKPOINT]        deployed on Serve by this job (app EVAL_APP)
    vla=BASE@ADAPTER_DIR     a LoRA adapter on that base, served by the base's deployment
    serve=NAME[@ADAPTER]     an already running `gauntlet serve` app (APP_NAME)
    remote=ws://...|http://  an openpi-protocol policy server
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gauntlet.deployments.app import APP_NAME, EVAL_APP, deployment_name
from gauntlet.platform.eval.config import EvalConfig, EvalConfigError

if TYPE_CHECKING:
    from gauntlet.deployments.app import PolicyServing

REMOTE_SCHEMES = ("ws://", "wss://", "http://", "https://")


@dataclass(frozen=True)
class PolicyTarget:
    """Where a policy lives, in a form that can be shipped to an actor (plain strings)."""

    label: str  # results column value
    kind: str  # "serve" | "remote"
    app: str = ""  # Serve application (kind=serve)
    deployment: str = ""  # Serve deployment (kind=serve)
    url: str = ""  # endpoint (kind=remote)
    adapter: str = ""  # LoRA adapter the deployment serves by name (kind=serve; "" = the base)


def policy_targets(cfg: EvalConfig) -> tuple[list[PolicyTarget], list[PolicyServing]]:
    """(targets for the actors, serving specs this job must deploy under EVAL_APP).

    `vla=BASE@ADAPTER_DIR` evaluates a LoRA adapter: the base is deployed once, with the adapter's
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
            target = PolicyTarget(label=f"remote:{rest}", kind="remote", url=rest)
        elif kind == "serve":
            name, _, adapter = rest.partition("@")
            PolicyRef.parse(name)
            target = PolicyTarget(label=rest, kind="serve", app=APP_NAME, deployment=deployment_name(name),
                                  adapter=adapter)
        else:
            target = _deployed_target(cfg, text, deploy)
        if any(t.label == target.label for t in targets):
            raise EvalConfigError(f"policy {target.label!r} is named twice")
        targets.append(target)
    return targets, list(deploy.values())


def _deployed_target(cfg: EvalConfig, text: str, deploy: dict[str, PolicyServing]) -> PolicyTarget:
    """`NAME[=CHECKPOINT][@ADAPTER_DIR]`: adds (or merges) its serving spec into `deploy`."""
    from gauntlet.deployments.app import specs_from_names

    base_text, _, adapter_path = text.partition("@")
    try:
        spec = specs_from_names([base_text], replicas=cfg.replicas, max_batch_size=cfg.max_batch_size,
                                batch_wait_timeout_s=cfg.batch_wait_timeout_s, vla_size=cfg.vla_size)[0]
    except ValueError as exc:
        raise EvalConfigError(str(exc)) from None
    if spec.ref.checkpoint and not Path(spec.ref.checkpoint).exists():
        raise EvalConfigError(f"{text}: checkpoint {spec.ref.checkpoint} does not exist")
    adapter = ""
    if adapter_path:
        adapter_dir = Path(adapter_path).resolve()
        if spec.ref.name != "vla":
            raise EvalConfigError(f"{text}: adapters are for the vla policy")
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
