"""Policy families, and `NAME[=CHECKPOINT]`, the way the CLI and configs name a policy.

A family is declared once, as one `PolicyFamily` entry: the built-ins in `policies/families.py`,
others in a plugin module named by `GAUNTLET_POLICY_PLUGINS` (comma-separated modules, each calling
`register_family` at import). Everything that builds, checks, serves or lists a policy derives from the
entries: `make_policy`, the checkpoint pre-flight, serving kwargs, the replicas' Ray runtime_env, where
`gauntlet eval` runs it, and every `--help` that lists families.

Plugins reach other processes through the environment variable: Serve replicas and rollout actors are
started with it in their runtime_env (`plugin_env_vars`), and a CLI's `--help` reads it like any
lookup. A plugin module is imported on the first lookup its name needs, so a process that only builds
a built-in never imports one (a replica in another family's runtime_env may lack the plugin's imports).
Entries name their code as `"module:attribute"`, loaded on use, so listing families imports no
framework.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gauntlet.policies.base import CountsCompiles, Policy, ServesAdapters, WarmsUp
from gauntlet.runtime.registry import Registry, import_object

PLUGINS_ENV = "GAUNTLET_POLICY_PLUGINS"  # comma-separated modules that register policy families
# Optional abilities a family can declare -> the protocol its policies then satisfy (policies/base.py).
ABILITIES = {"warmup": WarmsUp, "adapters": ServesAdapters, "compile_count": CountsCompiles}
# A family name is a path segment (/v1/policies/NAME), a Serve deployment name and a results label;
# `=` and `@` separate a name from its checkpoint and adapter on the command line.
FAMILY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
# `NAME@RELEASE`: a version as package indexes spell it (1.2.3, 0.4.4.post1, 2.0rc1).
RELEASE = re.compile(r"[0-9][0-9A-Za-z.+!-]*")
# The first words of `gauntlet eval --policy` targets that are not families.
RESERVED_NAMES = frozenset({"deploy", "serve", "remote"})


@dataclass(frozen=True)
class ServingOptions:
    """The command-line serving options a family may turn into constructor kwargs."""

    # `--vla-size`: the model preset a family builds when no checkpoint is given ("": the family's own default).
    preset: str = ""
    num_gpus: float = 0.0  # GPUs per replica (a family may then place its model on the GPU)


@dataclass(frozen=True)
class PolicyFamily:
    """Everything Gauntlet needs to know about one kind of policy. Hooks are `"module:attribute"`."""

    name: str  # what `--policy NAME[=CHECKPOINT]` says
    summary: str  # one line for the `--help` texts that list families
    # (checkpoint: str | None, **kwargs) -> Policy: loads a checkpoint, or builds from kwargs without one.
    factory: str
    # (ref: PolicyRef, **kwargs) -> PolicyRef: refuses, before anything is deployed, a checkpoint that
    # cannot serve Gauntlet's environment, and returns the ref replicas load. Runs in the caller's
    # process, so it imports nothing heavy. None: nothing to check.
    preflight: str | None = None
    # (ref: PolicyRef, options: ServingOptions) -> dict: constructor kwargs from the CLI's serving options.
    serving_kwargs: str | None = None
    # (release: str | None) -> dict: the Ray runtime_env of its replicas when its libraries pin versions
    # Gauntlet's stack does not have (LeRobot); `release` is PolicyRef.release (None: the family's
    # default release). None: Gauntlet's own environment.
    runtime_env: str | None = None
    # (checkpoint: str) -> Any: run before its replicas are deployed, in a throwaway Ray task of their
    # runtime_env, to refuse a checkpoint that environment cannot load with a clear ValueError (LeRobot:
    # a config.json field the chosen release does not know). None: nothing to check there.
    env_check: str | None = None
    # Whether `gauntlet eval` runs it in each rollout actor unless told to deploy it (`deploy=NAME`):
    # for policies that cost less than a round trip to a replica.
    local_by_default: bool = False
    abilities: frozenset[str] = frozenset()  # names from ABILITIES its policies have

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not FAMILY_NAME.fullmatch(self.name) or self.name in RESERVED_NAMES:
            raise ValueError(f"name: {self.name!r} is not a policy family name (letters, digits, _ and -, "
                             f"not {sorted(RESERVED_NAMES)})")
        unknown = sorted(set(self.abilities) - set(ABILITIES))
        if unknown:
            raise ValueError(f"abilities: unknown {unknown}; known: {sorted(ABILITIES)}")
        object.__setattr__(self, "abilities", frozenset(self.abilities))

    @property
    def serves_adapters(self) -> bool:
        """Whether `NAME=BASE@ADAPTER_DIR` targets and `--adapters-dir` apply to it."""
        return "adapters" in self.abilities


_FAMILIES: Registry[PolicyFamily] = Registry("policy")
_plugins_imported: set[str] = set()


def register_family(family: PolicyFamily) -> PolicyFamily:
    """Adds a family (at import of the module that declares it); a name taken already is refused."""
    _load_builtins()  # first, so that a plugin reusing a built-in name is the one refused
    return _FAMILIES.register(family.name, family)


def _load_builtins() -> None:
    import gauntlet.policies.families  # noqa: F401 - registers the built-in families on first import


def plugin_modules() -> list[str]:
    """The modules `GAUNTLET_POLICY_PLUGINS` names, in order."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def _load_plugins() -> None:
    for module in plugin_modules():
        if module in _plugins_imported:
            continue
        _plugins_imported.add(module)
        try:
            importlib.import_module(module)
        except ImportError as exc:
            _plugins_imported.discard(module)
            raise ValueError(f"{PLUGINS_ENV}: policy plugin module {module!r} cannot be imported: {exc}") from None


def plugin_env_vars() -> dict[str, str]:
    """What a Ray worker needs in its runtime_env env_vars to see this process's plugin families."""
    modules = plugin_modules()
    return {PLUGINS_ENV: ",".join(modules)} if modules else {}


def families() -> Registry[PolicyFamily]:
    """Every family: the built-ins, then those of the plugin modules."""
    _load_builtins()
    _load_plugins()
    return _FAMILIES


def policy_family(name: str) -> PolicyFamily:
    """The family called `name`; UnknownNameError (a ValueError) lists the known ones."""
    _load_builtins()
    if name not in _FAMILIES:
        _load_plugins()
    return _FAMILIES.lookup(name)


def families_help(pick: Callable[[PolicyFamily], bool] | None = None, *, summaries: bool = True) -> str:
    """The families (those `pick` accepts) as `--help` lists them: `name (summary); ...`, or names only."""
    try:
        listed, problem = list(families().values()), ""
    except ValueError as exc:  # a broken plugin must not hide the built-ins from --help
        listed, problem = list(_FAMILIES.values()), f" [{exc}]"
    listed = [f for f in listed if pick is None or pick(f)]
    if not summaries:
        return ", ".join(f.name for f in listed) + problem
    return "; ".join(f"{f.name} ({f.summary})" for f in listed) + problem


@dataclass(frozen=True)
class PolicyRef:
    """A policy named on the command line: `vla`, `vla=ckpt/dir`, `scripted`, `lerobot@0.4.4=ckpt/dir`."""

    name: str  # family name
    checkpoint: str | None = None  # checkpoint directory, if any
    # `NAME@RELEASE`: the release of the family's library its replicas run, handed to the family's
    # runtime_env hook; only families with their own runtime_env take one. None: the family's default.
    release: str | None = None

    @classmethod
    def parse(cls, text: str) -> PolicyRef:
        head, _, ckpt = text.partition("=")
        name, at, release = (part.strip() for part in head.partition("@"))
        family = policy_family(name)  # an unknown name is refused here, listing the known ones
        if at and not RELEASE.fullmatch(release):
            raise ValueError(f"{text.strip()}: {release!r} is not a release (NAME@RELEASE, e.g. {name}@1.2.3)")
        if at and family.runtime_env is None:
            pinned = [f.name for f in families().values() if f.runtime_env]
            raise ValueError(f"{text.strip()}: the {name} policy runs in Gauntlet's own environment, so no release "
                             f"can be pinned; NAME@RELEASE is for {', '.join(pinned) or 'no family here'}")
        return cls(name, ckpt.strip() or None, release or None)


def split_adapter(text: str) -> tuple[str, str]:
    """`NAME[@RELEASE][=CHECKPOINT][@ADAPTER_DIR]` -> (the policy text, the adapter directory or "").
    An adapter follows the checkpoint; without a checkpoint, `NAME@X` names an adapter of a family
    that serves adapters and a release of any other."""
    head, eq, ckpt = text.partition("=")
    if eq:
        ckpt, _, adapter = ckpt.partition("@")
        return f"{head}={ckpt}", adapter
    name, _, after = head.partition("@")
    if after and policy_family(name.strip()).serves_adapters:
        return name, after
    return head, ""


def make_policy(name: str, checkpoint: str | None = None, **kwargs: Any) -> Policy:
    """Builds a policy. Heavy frameworks are imported here, only for the family asked for."""
    return import_object(policy_family(name).factory)(checkpoint, **kwargs)


def check_checkpoint(ref: PolicyRef, **kwargs: Any) -> PolicyRef:
    """The family's checkpoint pre-flight (see PolicyFamily.preflight): the ref replicas should load."""
    preflight = policy_family(ref.name).preflight
    return import_object(preflight)(ref, **kwargs) if preflight else ref


def serving_kwargs(ref: PolicyRef, options: ServingOptions) -> dict[str, Any]:
    """Constructor kwargs of `ref`'s replicas from the command line's serving options."""
    hook = policy_family(ref.name).serving_kwargs
    return dict(import_object(hook)(ref, options)) if hook else {}


def _run_env_check(hook: str, checkpoint: str) -> Any:
    return import_object(hook)(checkpoint)


def check_in_replica_env(ref: PolicyRef, runtime_env: dict[str, Any] | None) -> None:
    """The family's env_check (see PolicyFamily.env_check) on `ref`'s checkpoint, in a throwaway Ray
    task of `runtime_env`; its ValueError is raised here as it was raised there. Needs a running Ray."""
    import ray

    hook = policy_family(ref.name).env_check
    if not hook or not ref.checkpoint:
        return
    task = ray.remote(num_cpus=0, max_retries=0, runtime_env=runtime_env)(_run_env_check)
    try:
        ray.get(task.remote(hook, ref.checkpoint))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, ValueError):
            raise exc.cause from None  # the check's own error, not Ray's wrapper and its traceback
        raise


def runtime_env_for(name: str, release: str | None = None) -> dict[str, Any] | None:
    """The Ray runtime_env a family's replicas need, running `release` of its library (None: its
    default), or None: Gauntlet's own environment."""
    hook = policy_family(name).runtime_env
    return import_object(hook)(release) if hook else None
