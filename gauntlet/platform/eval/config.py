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
                                          "remote=URL (an openpi-protocol ws:// or http:// server; see --remote-*), or serve=NAME "
                                          "(an already running `gauntlet serve` app); repeatable")
    out: str = option(help="run directory (results, status, report)")
    trials: int = option(1, help="trials per scene and policy")
    actors: int = option(2, help="rollout actors")
    horizon: int = option(300, help="steps per episode")
    replan_steps: tuple[str, ...] = option((), help="K or LABEL=K: execute only the first K actions of each "
                                                    "returned chunk, then ask the policy again (openpi's "
                                                    "replan_steps); a bare K applies to every policy without "
                                                    "its own; LABEL is the policy's results label or its "
                                                    "--policy text (default: the whole chunk)")
    remote_image_size: int = option(224, help="remote targets whose metadata declares no observation_spec "
                                              "(openpi's server sends {}) get openpi's LIBERO observation: both "
                                              "cameras resized with padding to this many pixels square, uint8, "
                                              "the 8-d state and the prompt")
    remote_action_dim: int = option(0, help="a remote policy's action dimension when its metadata does not "
                                            "declare one (0: the environment's, 7); answers are checked "
                                            "against it")
    remote_chunk_len: int = option(0, help="a remote policy's chunk length (actions per answer) when its "
                                           "metadata does not declare one (0: any); answers are checked "
                                           "against it")
    remote_api_key_env: str = option("GAUNTLET_REMOTE_API_KEY",
                                     help="environment variable holding the API key sent to remote targets "
                                          "(`Authorization: Api-Key KEY`, openpi's header); read at start, "
                                          "never written to run.json")
    remote_connect_s: float = option(30.0, help="retry budget for reaching a remote server (connect and "
                                                "metadata, and reconnects mid-run); an unreachable server "
                                                "is an error after it")
    remote_timeout_s: float = option(120.0, help="longest wait for one answer of a remote server")
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
        object.__setattr__(self, "replan_steps", as_tuple(self.replan_steps))
        for name in ("trials", "actors", "horizon", "write_every", "remote_image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("remote_action_dim", "remote_chunk_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("remote_connect_s", "remote_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
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
        # Recorded only when they can change results, so runs started before these flags still resume.
        if self.replan_steps:
            out["replan_steps"] = list(self.replan_steps)
        if any(p.startswith("remote=") for p in self.policy):
            for name in ("remote_image_size", "remote_action_dim", "remote_chunk_len"):
                out[name] = getattr(self, name)
        return out
