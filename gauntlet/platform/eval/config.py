"""`gauntlet eval`'s flags (EvalConfig) and the identity a `--resume` must match."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gauntlet.deployments.batcher import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_SIZE
from gauntlet.envs.scene_check import SCENE_FILTERS  # the EvalConfig fields that select scenes
from gauntlet.keys import ACTION_DIM
from gauntlet.policies.registry import families_help
from gauntlet.policies.vla.config import DEFAULT_PRESET
from gauntlet.runtime.config_args import as_tuple, option, require_at_least
from gauntlet.runtime.tracking import REPORT_TO, REPORT_TO_HELP


class EvalConfigError(ValueError):
    """Bad input found before any work starts."""


class EvalRunError(RuntimeError):
    """The run cannot go on (no rollout actor could be started); rows already written are kept, and
    `--resume` continues once the cause is fixed."""


def _policy_help() -> str:
    """`--policy`'s help, listing the policy families registered when `--help` is built."""
    return (f"NAME[=CHECKPOINT] with NAME one of: {families_help()}. Deployed on Serve by this job, except "
            f"{families_help(lambda f: f.local_by_default, summaries=False)}, which run in-process in the rollout "
            "actors; deploy=NAME[=CHECKPOINT] deploys any policy on Serve, e.g. deploy=scripted; "
            "NAME=BASE@ADAPTER_DIR for a LoRA adapter on that base "
            f"({families_help(lambda f: f.serves_adapters, summaries=False)}); remote=URL (an openpi-protocol ws:// "
            "or http:// server; see --remote-*), or serve=NAME (an already running `gauntlet serve` app); repeatable")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluates policies over a scene database on Ray (RAY_ADDRESS, else an embedded local Ray)."""

    scenes: str = option(help="scene database directory")
    policy: tuple[str, ...] = option(help=_policy_help)
    out: str = option(help="run directory (results, status, report)")
    trials: int = option(1, help="trials per scene and policy")
    actors: int = option(2, help="rollout actors")
    envs_per_actor: int = option(1, help="episodes each rollout actor runs at once, each in its own env: "
                                         "while some wait for the policy's answer the actor steps the "
                                         "others, and their requests reach the replica together (batches)")
    horizon: int = option(300, help="steps per episode")
    replan_steps: tuple[str, ...] = option((), help="K or LABEL=K: execute only the first K actions of each "
                                                    "returned chunk, then ask the policy again (openpi's "
                                                    "replan_steps); a bare K applies to every policy without "
                                                    "its own; LABEL is the policy's results label or its "
                                                    "--policy text (default: the whole chunk)")
    policy_tasks: tuple[str, ...] = option((), help="LABEL=TASK, repeatable: evaluate that policy only on these "
                                                    "tasks (e.g. one trained for a single task); its scenes of "
                                                    "other tasks are recorded as skipped, with the reason. LABEL "
                                                    "as for --replan-steps (default: every policy, every task)")
    remote_image_size: int = option(224, help="remote targets whose metadata declares no observation_spec "
                                              "(openpi's server sends {}) get openpi's LIBERO observation: both "
                                              "cameras resized with padding to this many pixels square, uint8, "
                                              "the 8-d state and the prompt")
    remote_action_dim: int = option(0, help="a remote policy's action dimension when its metadata does not "
                                            f"declare one (0: the environment's, {ACTION_DIM}); answers are checked "
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
    resume: bool = option(False, help="continue the run in --out: the missing episodes run, and those skipped "
                                      "for a transient reason (policy unreachable, timeout, actor died); "
                                      "permanent skips (environment or policy/task mismatch) stay")
    tasks: tuple[str, ...] = option((), help="only these tasks")
    variants: tuple[str, ...] = option((), help="only these variants")
    error_types: tuple[str, ...] = option((), help="only these error types")
    categories: tuple[str, ...] = option((), help="only these categories")
    limit: int = option(0, help="at most this many scenes (0 = all), after filtering, in id order")
    max_batch_size: int = option(DEFAULT_MAX_BATCH_SIZE, help="Serve batch size for deployed policies")
    batch_wait_timeout_s: float = option(DEFAULT_BATCH_WAIT_S, help="Serve batch wait for deployed policies")
    replicas: int = option(1, help="Serve replicas per deployed policy")
    vla_size: str = option(DEFAULT_PRESET, help="VLA preset for `vla` without a checkpoint")
    actor_cpus: float = option(1.0, help="CPUs reserved per rollout actor")
    actor_gpus: float = option(0.0, help="GPU share per rollout actor (e.g. 0.125: eight actors per GPU); each "
                                         "actor renders on its GPU's EGL device, so the actors of a node spread "
                                         "over its GPUs (0: render where EGL points, Mesa on a CPU)")
    actor_resource: str = option("", help="custom Ray resource each actor needs one unit of "
                                          "(pins rollouts to the nodes that offer it)")
    write_every: int = option(8, help="episodes per results part file")
    ping_timeout_s: float = option(30.0, help="an actor that does not answer a liveness ping for this "
                                              "long is treated as dead and its items re-queued; while no "
                                              "actor is working, the driver says every this often what "
                                              "they ask for and what the cluster has")
    max_attempts: int = option(3, help="an episode whose rollout actor dies (or stops answering pings) this "
                                       "many times while running it is recorded as skipped (actor_died, "
                                       "transient) and the run goes on; after a first death each of the "
                                       "actor's episodes runs alone, so only the one that kills it is capped")
    start_attempts: int = option(3, help="an actor slot whose actor fails to start this many times in a row "
                                         "is given up; the run ends with the last error when none is left")
    start_timeout_s: float = option(600.0, help="the run ends with an error (exit 2) when no rollout actor "
                                                "has been working for this long: actors that cannot be "
                                                "placed (a resource no node has) or started")
    run_id: str = option("", help="run id (default: derived from the run directory name)")
    report_to: str = option("none", help=REPORT_TO_HELP + "; progress (episodes done, success so far, "
                                         "episodes/min) and the final tables", choices=REPORT_TO)
    record_video: int = option(0, help="record this many episodes per policy x task x error type as MP4 "
                                       "(RUN/videos/, a gallery in the HTML report), the same scenes for every "
                                       "policy; when a group has both outcomes and the recorded ones show one, "
                                       "an episode with the other is replayed with recording. Frames are "
                                       "rendered only for recorded episodes (0 = none)")
    video_cameras: tuple[str, ...] = option(("agentview",), help="cameras in each video, side by side "
                                                                "(agentview, robot0_eye_in_hand)")
    video_size: int = option(160, help="video frame height = width per camera, pixels (even)")
    video_stride: int = option(2, help="a video frame every this many env steps (played at 10 frames/s)")
    video_tasks: tuple[str, ...] = option((), help="record videos only for these tasks (default: all)")
    video_error_types: tuple[str, ...] = option((), help="record videos only for these error types (default: "
                                                         "all; `none` = nominal scenes)")

    def __post_init__(self) -> None:
        for name in SCENE_FILTERS:
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        for name in ("replan_steps", "policy_tasks", "video_cameras", "video_tasks", "video_error_types"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        self._check_video()
        require_at_least(self, 1, "trials", "actors", "envs_per_actor", "horizon", "write_every",
                         "remote_image_size", "max_attempts", "start_attempts")
        require_at_least(self, 0, "remote_action_dim", "remote_chunk_len", "actor_gpus")
        for name in ("remote_connect_s", "remote_timeout_s", "start_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.policy:
            raise ValueError("policy: name at least one policy")

    def _check_video(self) -> None:
        from gauntlet.keys import ROBOSUITE_CAMERAS

        require_at_least(self, 0, "record_video")
        if self.video_size % 2 or not 16 <= self.video_size <= 1024:
            raise ValueError(f"video_size must be even and in [16, 1024], got {self.video_size}")
        require_at_least(self, 1, "video_stride")
        unknown = [c for c in self.video_cameras if c not in ROBOSUITE_CAMERAS]
        if unknown or not self.video_cameras:
            raise ValueError(f"video_cameras: unknown {unknown}; choose from {', '.join(ROBOSUITE_CAMERAS)}")

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
        if self.policy_tasks:
            out["policy_tasks"] = list(self.policy_tasks)
        if any(p.startswith("remote=") for p in self.policy):
            for name in ("remote_image_size", "remote_action_dim", "remote_chunk_len"):
                out[name] = getattr(self, name)
        return out
