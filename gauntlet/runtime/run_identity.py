"""Run identity for `--resume`: a run directory remembers what it was started with.

A new run writes `identity` (the settings that decide its results) and its full config into a JSON
file. `--resume` continues only a run with the same identity, and otherwise names the fields that
differ, so a resumed run never mixes results of two configurations.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gauntlet.runtime.manifests import ManifestError, read_json, write_json


class RunIdentityError(ValueError):
    """The run directory cannot be started or resumed as asked; says what to do."""


def identity_hash(identity: dict[str, Any]) -> str:
    """A short stable digest of an identity (for logs and file names)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing_fields(previous: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """Names of the identity fields whose values differ (or exist on one side only)."""
    return sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))


def write_run_manifest(path: Path, identity: dict[str, Any], config: dict[str, Any]) -> None:
    """Records a new run (atomically)."""
    write_json(path, {"identity": identity, "config": config, "config_hash": identity_hash(identity)}, indent=2)


def check_resume(path: Path, identity: dict[str, Any], where: str) -> None:
    """Raises RunIdentityError unless the run recorded at `path` has this identity.

    `where` names the run in the message (its directory, or the flag that gave it).
    """
    try:
        previous = read_json(path, "run manifest").get("identity")
    except (ManifestError, AttributeError) as exc:
        raise RunIdentityError(f"{path}: unreadable run manifest ({exc})") from None
    if not isinstance(previous, dict):
        raise RunIdentityError(f"{path}: unreadable run manifest (no identity)")
    diff = differing_fields(previous, json.loads(json.dumps(identity, default=str)))
    if diff:
        raise RunIdentityError(f"{where} was started with a different configuration (differs in: "
                               f"{', '.join(diff)}); resume it with the same flags or choose another --out")
