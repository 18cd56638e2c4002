"""Does a checkpoint's `config.json` parse as the chosen LeRobot release's config class?

A checkpoint saved by one LeRobot release can carry config fields another does not know (0.5 added
`pretrained_revision` to every policy config, for one); LeRobot itself then fails deep inside
draccus. `check_config` runs inside the release's environment (it imports that LeRobot) and names the
field and the releases to try instead: it is the lerobot family's `env_check`, which `build_app` runs
in a throwaway Ray task of the replicas' runtime_env before deploying them; the replica repeats it
before loading weights.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

from gauntlet.policies.lerobot.config import CONFIG_FILE, LeRobotDirError
from gauntlet.policies.lerobot.environment import TESTED_RELEASES


class LeRobotReleaseError(LeRobotDirError):
    """A config.json the running LeRobot release cannot read (an unknown field, type or value)."""


def _suggest(running: str) -> str:
    others = [r for r in TESTED_RELEASES if r != running]
    pins = " or ".join(f"--policy lerobot@{r}=DIR" for r in others)
    return f"it was probably written by another LeRobot release: try {pins}" if pins else ""


def unknown_fields(cls: type, values: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys of `values` (and of nested dataclass-typed values) that `cls` does not declare."""
    declared = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = []
    for key, value in values.items():
        if key not in declared:
            unknown.append(prefix + key)
        elif isinstance(value, dict) and dataclasses.is_dataclass(hints.get(key)):
            unknown += unknown_fields(hints[key], value, prefix=f"{prefix}{key}.")
    return unknown


def check_config(path: str) -> str:
    """Raises LeRobotReleaseError unless `path`/config.json parses as the running LeRobot's config
    class; returns the release that read it. Runs where LeRobot is importable."""
    from importlib.metadata import version

    import lerobot.policies  # noqa: F401 - importing the package registers its policy config classes
    from lerobot.configs.policies import PreTrainedConfig

    running = version("lerobot")
    cfg_path = Path(path) / CONFIG_FILE
    values = json.loads(cfg_path.read_text())
    policy_type = values.pop("type", None)
    known = sorted(PreTrainedConfig.get_known_choices())
    if policy_type not in known:
        raise LeRobotReleaseError(cfg_path, "type", f"policy type {policy_type!r} is not one lerobot {running} "
                                  f"has (it has {known}); {_suggest(running)}")
    cls = PreTrainedConfig.get_choice_class(policy_type)
    unknown = unknown_fields(cls, values)
    if unknown:
        raise LeRobotReleaseError(cfg_path, unknown[0], f"not a field of {cls.__name__} in lerobot {running} "
                                  f"(unknown: {unknown}); {_suggest(running)}")
    try:  # the real loader: wrong types and values fail here, in draccus's words
        PreTrainedConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is reported the same way
        raise LeRobotReleaseError(cfg_path, "config", f"lerobot {running} cannot parse it as {cls.__name__}: "
                                  f"{type(exc).__name__}: {exc}; {_suggest(running)}") from None
    return running
