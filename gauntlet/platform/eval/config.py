"""`gauntlet eval`'s flags (EvalConfig) and the identity a `--resume` must match."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gauntlet.runtime.config_args import as_tuple, option

# EvalConfig fields that select scenes -> the scene metadata column each one filters
SCENE_FILTERS: dict[str, str] = {"tasks": "task", "variants": "variant", "error_types": "error_type",
                                 "categories": "category"}


class EvalConfigError(ValueError):
    """Bad input found before any work starts."""


@dataclass(frozen=True)
class EvalConfig:
    """Evaluates policies over a scene database on Ray (RAY_ADDRESS, else an embedded local Ray)."""

    scenes: str = option(help="scene database directory")
    policy: tuple[str, ...] = option(help="NAME[=CHECKPOINT] (deployed on Serve by this job; vla=BASE@ADAPTER_DIR "
                                          "for a LoRA adapter on that base), "
                                          "remote=URL (ws:// or http:// endpoint), or serve=NAME "
                                          "(an already running `gauntlet serve` app); repeatable")
    out: str = option(help="run directory (results, status, report)")
    trials: int = option(1, help="trials per scene and policy")
    actors: int = option(2, help="rollout actors")
    horizon: int = option(300, help="steps per episode")
    resume: bool = option(False, help="continue the run in --out: only missing episodes run")
    tasks: tuple[str, ...] = option((), help="only these tasks")
    variants: tuple[str, ...] = option((), help="only these variants")
    error_types: tuple[str, ...] = option((), help="only these error types")
    categories: tuple[str, ...] = option((), help="only these categories")
    limit: int = option(0, help="at most this many scenes (0 = all), after filtering, in id order")
    max_batch_size: int = option(32, help="Serve batch size for deployed policies")
    batch_wait_timeout_s: float = option(0.005, help="Serve batch wait for deployed policies")
    replicas: int = option(1, help="Serve replicas per deployed policy")
    vla_size: str = option("tiny", help="VLA preset for `vla` without a checkpoint")
    actor_cpus: float = option(1.0, help="CPUs reserved per rollout actor")
    actor_resource: str = option("", help="custom Ray resource each actor needs one unit of "
                                          "(pins rollouts to the nodes that offer it)")
    write_every: int = option(8, help="episodes per results part file")
    ping_timeout_s: float = option(30.0, help="an actor that does not answer a liveness ping for this "
                                              "long is treated as dead and its items re-queued")
    run_id: str = option("", help="run id (default: derived from the run directory name)")

    def __post_init__(self) -> None:
        for name in SCENE_FILTERS:
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        for name in ("trials", "actors", "horizon", "write_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.policy:
            raise ValueError("policy: name at least one policy")

    @property
    def effective_run_id(self) -> str:
        return self.run_id or Path(self.out).resolve().name

    def identity(self) -> dict[str, Any]:
        """What must match for --resume to continue a run (not actors, batch knobs, etc.)."""
        keys = ("scenes", "policy", "trials", "horizon", "tasks", "variants", "error_types", "categories",
                "limit", "vla_size")
        out = {k: getattr(self, k) for k in keys}
        for name in SCENE_FILTERS:  # recorded as the comma-joined text earlier runs wrote
            out[name] = ",".join(out[name])
        out["scenes"] = str(Path(self.scenes).resolve())
        out["policy"] = list(self.policy)
        out["run_id"] = self.effective_run_id
        return out
