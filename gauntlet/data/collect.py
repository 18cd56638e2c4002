"""`gauntlet data collect`: scripted-expert demonstrations recorded into a dataset.

Per control step it records what a policy would have seen and what was applied:
- `observation.state`: `GauntletEnv.observe()["observation/state"]`, the very observation the
  eval path (gauntlet.platform.eval.episode.run_episode) sends to policies;
- with --cameras, `observation/image` and `observation/wrist_image` from the same `observe()`
  rendered at --render-size (the scene databases' camera size) and resized to --image-size with
  the eval path's resize (OpenCV INTER_AREA, as filter_obs does), so training images are exactly
  what a policy is sent at evaluation;
- with --object-state, `observation.object_state`: the privileged object state of the same
  `observe()` (what the scripted oracle and privileged BC-RNNs read; its width depends on the task,
  so such a dataset holds tasks of one width);
- `action`: the expert's action as the env applies it (clipped to [-1, 1], rounded to float32
  before it is applied, so replaying the stored actions from the seed reproduces the episode);
- the robomimic-style flattened MuJoCo state (time, qpos, qvel) before the action, plus the exact
  initial state (gauntlet.envs.sim_state) under "init/..." in the episode's .npz.

Only successful episodes are kept unless --keep-failures. Rendering is slow on a CPU (~10 steps/s
with two cameras), so cameras are opt-in. With --from-scenes DB the same recording starts from
scenes' states instead of resets (gauntlet.data.recovery_demos: recovery demonstrations).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.data.commands import run_dataset_command
from gauntlet.data.dataset_schema import DatasetError, EpisodeTags
from gauntlet.data.dataset_writer import DatasetWriter
from gauntlet.data.images import resize_image
from gauntlet.keys import DATASET_CAMERAS, OBJECT_STATE_KEY, STATE_KEY
from gauntlet.runtime.config_args import as_tuple, option, parse_config, require_at_least
from gauntlet.runtime.manifests import jsonable
from gauntlet.runtime.progress import Progress

# observe() key -> dataset camera name
OBS_IMAGE_KEYS: dict[str, str] = {key: cam for cam, key in DATASET_CAMERAS.items()}


@dataclass(frozen=True)
class RecordingOptions:
    """What every recording of scripted-expert episodes takes (`data collect`, with or without --from-scenes)."""

    out: str = option(help="dataset directory to create")
    cameras: bool = option(False, help="also record agentview and wrist images (slow on a CPU)")
    object_state: bool = option(False, help="also record the privileged object state (the tasks must share "
                                            "its width)")
    image_size: int = option(64, help="stored image size (pixels, square)")
    horizon: int = option(400, help="max control steps per episode (stops at the first success)")
    keep_failures: bool = option(False, help="keep episodes that did not succeed (success=False)")
    noise_std: float = option(0.0, help="std of Gaussian noise the expert adds to its actions")
    valid_fraction: float = option(0.0, help="fraction put in the 'valid' split, the rest in 'train': the last "
                                             "episodes of each task, or with --from-scenes the recoveries "
                                             "from the last selected scenes (scene_id order)")
    overwrite: bool = option(False, help="replace an existing dataset at --out")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "horizon")
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in [8, 1024], got {self.image_size}")
        require_at_least(self, 0, "noise_std")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")


@dataclass(frozen=True)
class CollectConfig(RecordingOptions):
    """Records scripted-expert demonstrations (state, applied action, sim state, optional images).

    With --from-scenes DB it records the oracle recovering from a scene database's scenes instead
    (gauntlet.data.recovery_demos; its flags: `gauntlet data collect --from-scenes DB --help`).
    """

    task: tuple[str, ...] = option(("lift",), help="tasks (each gets --episodes episodes)",
                       aliases=("--tasks",))
    variant: tuple[str, ...] = option(("D0",), help="placement variants (D0, D1; each task gets --episodes "
                                                    "episodes of each)", aliases=("--variants",))
    episodes: int = option(10, help="episodes to record per task and variant (successful ones unless "
                                    "--keep-failures)")
    render_size: int = option(128, help="camera render size (pixels); 128 matches `scenes generate`'s "
                                        "default, so images equal what the eval path sends after resizing")
    seed: int = option(0, help="first env seed; attempt k of a task and variant resets with seed + k")
    max_attempts: int = option(0, help="give up on a task after this many attempts (0 = 3 x episodes)")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "task", as_tuple(self.task))
        object.__setattr__(self, "variant", as_tuple(self.variant))
        from gauntlet.envs.tasks import check_variant, get_task

        if not self.task_list or not self.variant:
            raise ValueError("task, variant: name at least one of each")
        for t in self.task_list:
            get_task(t)  # an unknown task is refused here, listing the known ones
        for v in self.variant:
            check_variant(v)
        if self.object_state:
            check_object_state_width(self.task_list, "object_state")
        require_at_least(self, 1, "episodes")
        if not 8 <= self.render_size <= 1024:
            raise ValueError(f"render_size must be in [8, 1024], got {self.render_size}")
        require_at_least(self, 0, "max_attempts")

    @property
    def task_list(self) -> tuple[str, ...]:
        return self.task

    @property
    def attempts_per_task(self) -> int:
        return self.max_attempts or 3 * self.episodes


@dataclass(frozen=True)
class RecordedEpisode:
    """One recorded expert rollout."""

    states: np.ndarray  # (T, 8) float32 observation/state before each action
    actions: np.ndarray  # (T, 7) float32 applied actions
    sim_states: np.ndarray  # (T, S) float64 flattened MuJoCo state before each action
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8 (empty without cameras)
    success: bool  # task solved within the horizon
    init_state: dict[str, np.ndarray]  # exact initial state (gauntlet.envs.sim_state.capture_state)
    object_states: np.ndarray | None = None  # (T, K) float32 object state before each action, if recorded


class AlreadySolvedError(RuntimeError):
    """The task was solved in the state an episode was to start from: there is nothing to record."""


def check_object_state_width(tasks: Iterable[str], flag: str) -> None:
    """A dataset holds one object-state width: ValueError naming `flag` when these tasks' widths differ."""
    from gauntlet.envs.tasks import get_task

    widths = {t: get_task(t).object_state_dim for t in sorted(set(tasks))}
    if len(set(widths.values())) > 1:
        raise ValueError(f"{flag}: the tasks' object states differ in width ({widths}); record one width per "
                         "dataset")


def record_episode(env: Any, seed: int, horizon: int, cameras: bool, image_size: int,
                   noise_std: float = 0.0, object_state: bool = False) -> RecordedEpisode:
    """Resets `env` to `seed` and runs its scripted expert, recording every step."""
    from gauntlet.envs.experts import make_expert

    env.reset(seed)
    expert = make_expert(env, seed=seed, noise_std=noise_std)
    try:
        return record_from_here(env, expert, horizon, cameras, image_size, object_state)
    except AlreadySolvedError:
        raise AlreadySolvedError(f"seed {seed}: the task was already solved at reset; nothing to record") from None


def record_from_here(env: Any, expert: Any, horizon: int, cameras: bool, image_size: int,
                     object_state: bool = False) -> RecordedEpisode:
    """Runs `expert` from `env`'s current state (a reset, or a restored scene), recording every step."""
    init_state = env.get_state()
    states, actions, sims, objects = [], [], [], []
    images: dict[str, list[np.ndarray]] = {cam: [] for cam in OBS_IMAGE_KEYS.values()} if cameras else {}
    success = env.success()
    for _ in range(horizon):
        if success:
            break
        obs = env.observe(images=cameras)  # the same call the eval path makes
        states.append(obs[STATE_KEY])
        objects.append(obs[OBJECT_STATE_KEY])
        sims.append(env.sim.get_state().flatten())
        for key, cam in OBS_IMAGE_KEYS.items() if cameras else ():
            images[cam].append(resize_image(obs[key], image_size))
        # What env.step applies (clipped), rounded to the float32 the dataset stores, so that the
        # stored actions replay the episode bit for bit.
        action = np.clip(np.asarray(expert.act(), dtype=np.float64), -1.0, 1.0).astype(np.float32).astype(np.float64)
        success = env.step(action)
        actions.append(action)
    if not states:
        raise AlreadySolvedError("the task was already solved in the start state; nothing to record")
    return RecordedEpisode(
        states=np.stack(states).astype(np.float32), actions=np.stack(actions).astype(np.float32),
        sim_states=np.stack(sims).astype(np.float64),
        images={cam: np.stack(v) for cam, v in images.items()}, success=bool(success), init_state=init_state,
        object_states=np.stack(objects).astype(np.float32) if object_state else None,
    )


def add_recorded(writer: DatasetWriter, env: Any, ep: RecordedEpisode, *, task: str, variant: str, split: str,
                 seed: int | None, source_episode: str, tags: EpisodeTags | None = None) -> int:
    """Writes a recorded episode (with its exact initial state under "init/...") into `writer`."""
    return writer.add_episode(
        ep.states, ep.actions, task=task, variant=variant, prompt=env.spec.instruction, success=ep.success,
        sim_states=ep.sim_states, model_xml=env.sim.model.get_xml(), images=ep.images or None, split=split,
        seed=seed, fingerprint=env.fingerprint, source_episode=source_episode,
        sim_extra={f"init/{k}": v for k, v in ep.init_state.items()}, object_states=ep.object_states, tags=tags,
    )


def env_metadata(env: Any) -> dict[str, Any]:
    """What rebuilds the env: gauntlet's EnvConfig, robosuite's env args (robomimic env_args style)."""
    cfg = env.config
    controller = getattr(env.raw.robots[0], "composite_controller_config", None)
    env_kwargs = {"robots": [cfg.robot], "control_freq": cfg.control_freq, **dict(env.spec.env_kwargs)}
    if isinstance(controller, dict):
        env_kwargs["controller_configs"] = controller
    return {
        "env_name": env.spec.robosuite_env, "robot": cfg.robot, "control_freq": cfg.control_freq,
        "env_config": {**asdict(cfg), "cameras": list(cfg.cameras)},
        "env_args": {"env_name": env.spec.robosuite_env, "type": 1, "env_kwargs": jsonable(env_kwargs)},
        "fingerprint": env.fingerprint,
    }


def collect_demos(cfg: CollectConfig) -> Path:
    """Collects `cfg.episodes` episodes per task and variant into `cfg.out`; returns the dataset path.

    Raises DatasetError if a task yields too few episodes to keep within its attempts. info.json's
    `envs` has one entry per task and variant ("task/variant", see `unite_env`).
    """
    from gauntlet.envs.env import make_env

    source = {"kind": "collect", "expert": "gauntlet.envs.experts.ScriptedExpert", "seed": cfg.seed,
              "horizon": cfg.horizon, "noise_std": cfg.noise_std, "keep_failures": cfg.keep_failures,
              "object_state": cfg.object_state,
              "render_size": cfg.render_size if cfg.cameras else None,
              "image_size": cfg.image_size if cfg.cameras else None}
    total = cfg.episodes * len(cfg.task_list) * len(cfg.variant)
    message = (f"[data collect] {total} episodes ({', '.join(cfg.task_list)} {', '.join(cfg.variant)}, cameras="
               f"{'on' if cfg.cameras else 'off'}) -> {cfg.out}")
    print(message, flush=True)
    progress = Progress(total, "data collect", unit="episodes")
    with DatasetWriter(cfg.out, source=source, overwrite=cfg.overwrite) as writer:
        for task in cfg.task_list:
            for variant in cfg.variant:
                env = make_env(task, variant, image_size=cfg.render_size)
                try:
                    writer.register_env(task, variant, env_metadata(env))
                    _collect_task(writer, env, task, variant, cfg, progress)
                finally:
                    env.close()
        return writer.finalize()


def _collect_task(writer: DatasetWriter, env: Any, task: str, variant: str, cfg: CollectConfig,
                  progress: Progress) -> None:
    """Records `cfg.episodes` kept episodes of one task and variant (seeds cfg.seed, cfg.seed + 1, ...)
    into `writer`."""
    kept, attempts = 0, 0
    n_valid = int(round(cfg.episodes * cfg.valid_fraction))
    while kept < cfg.episodes and attempts < cfg.attempts_per_task:
        seed = cfg.seed + attempts
        attempts += 1
        ep = record_episode(env, seed, cfg.horizon, cfg.cameras, cfg.image_size, cfg.noise_std, cfg.object_state)
        if not ep.success and not cfg.keep_failures:
            print(f"[data collect] {task} seed {seed}: expert failed within {cfg.horizon} steps; not kept", flush=True)
            continue
        split = "valid" if kept >= cfg.episodes - n_valid else "train"
        add_recorded(writer, env, ep, task=task, variant=variant, split=split, seed=seed,
                     source_episode=f"{task}/{variant}/seed{seed}")
        kept += 1
        elapsed = max(time.monotonic() - progress.start, 1e-9)
        progress.update(extra=f"{task}: attempts={attempts} frames={writer.num_frames} "
                              f"({writer.num_frames / elapsed:.1f} frames/s)")
    if kept < cfg.episodes:
        raise DatasetError(cfg.out, f"task {task!r} {variant}: only {kept} of {cfg.episodes} episodes kept after "
                                    f"{attempts} attempts (raise --max-attempts or --horizon, or "
                                    "pass --keep-failures)")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--from-scenes" or a.startswith("--from-scenes=") for a in args):
        from gauntlet.data.recovery_demos import main as recovery_main

        return recovery_main(args)
    cfg = parse_config(CollectConfig, args, prog="gauntlet data collect", description=CollectConfig.__doc__)
    return run_dataset_command("gauntlet data collect", "data collect", lambda: collect_demos(cfg))


if __name__ == "__main__":
    sys.exit(main())
