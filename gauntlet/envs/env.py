"""`GauntletEnv`: a robosuite task with lazy rendering, exact state capture and fingerprints.

robosuite computes every observable (cameras included) on every physics sub-step. Gauntlet's
policies ask for observations only every H control steps (action chunking), so this wrapper turns
robosuite's observables off and reads what it needs straight from MuJoCo when it is asked: state
vectors are cheap, images are rendered only by `observe(images=True)`.
"""

from __future__ import annotations

import atexit
import json
import logging
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gauntlet.envs.fingerprint import fingerprint_of
from gauntlet.envs.rendering import configure_gl, egl_device_id
from gauntlet.envs.rotations import quat_wxyz_to_xyzw, quat_xyzw_to_axis_angle
from gauntlet.envs.sim_state import capture_state, restore_state
from gauntlet.envs.tasks import TaskSpec, check_variant, get_task
from gauntlet.keys import (
    ACTION_DIM,
    GRIPPER_INDEX,
    OBJECT_STATE_KEY,
    PROMPT_KEY,
    ROBOSUITE_CAMERAS,
    STATE_KEY,
)
from gauntlet.runtime.registry import UnknownNameError

configure_gl()

# GL contexts must be freed before EGL shuts down at interpreter exit, or MuJoCo's finalisers
# print EGL_NOT_INITIALIZED tracebacks into every job log.
# The hook is registered after MuJoCo's EGL module (which terminates the display at exit) so that,
# atexit being LIFO, it runs first.
_LIVE_ENVS: weakref.WeakSet = weakref.WeakSet()
_EXIT_HOOK_REGISTERED = False


def _close_renderers() -> None:
    for env in list(_LIVE_ENVS):
        try:
            env.close_renderer()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass

CAMERA_KEYS = ROBOSUITE_CAMERAS
ENV_SCHEMA = 1  # bump when observation layout or stepping semantics change (enters the fingerprint)


@dataclass(frozen=True)
class EnvConfig:
    """Everything that decides an env's dynamics and observations."""

    task: str  # a key of gauntlet.envs.tasks.TASKS
    variant: str = "D0"  # placement distribution: D0 (narrow) or D1 (wide)
    image_size: int = 128  # height = width of rendered camera images, pixels
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")  # cameras `observe` renders
    control_freq: int = 20  # policy steps per simulated second
    robot: str = "Panda"  # robosuite robot model
    # Step with `fast_control.FastStepper` (robosuite's OSC + gripper control loop with its Python
    # overhead hoisted; bit-exact with robosuite's own `step`, so it stays out of the fingerprint);
    # False: robosuite's `raw.step`. Configurations the fast path does not reproduce use raw.step anyway.
    fast_control: bool = True

    def __post_init__(self) -> None:
        get_task(self.task)
        check_variant(self.variant)
        if self.image_size < 8 or self.image_size > 1024:
            raise ValueError(f"image_size must be in [8, 1024], got {self.image_size}")
        for cam in self.cameras:
            if cam not in CAMERA_KEYS:
                raise UnknownNameError("camera", cam, sorted(CAMERA_KEYS))
        if self.control_freq <= 0:
            raise ValueError(f"control_freq must be positive, got {self.control_freq}")

    @classmethod
    def from_json(cls, text: str) -> EnvConfig:
        """The configuration a scene's `env_config` column records (`to_json`'s text)."""
        fields = json.loads(text)
        fields["cameras"] = tuple(fields.get("cameras", ()))
        return cls(**fields)

    def to_json(self) -> str:
        """The text a scene records in its `env_config` column (keys sorted: equal configs, equal texts)."""
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def spec(self) -> TaskSpec:
        return get_task(self.task)

    def dynamics_settings(self) -> dict[str, Any]:
        """The settings that enter the fingerprint: those that change dynamics or observations.

        The variant is not among them: it only changes where objects start, which a restored scene
        overrides anyway.
        """
        return {
            "env_schema": ENV_SCHEMA,
            "task": self.task,
            "robot": self.robot,
            "control_freq": self.control_freq,
            "cameras": list(self.cameras),
            "image_size": self.image_size,
        }


@dataclass
class _Counters:
    steps: int = 0  # control steps since the last reset/restore
    renders: int = 0  # camera images rendered since construction
    observe_calls: int = 0


@dataclass
class _Disturbances:
    """Env-level effects an injected error leaves behind (part of the captured state)."""

    gripper_stall_steps: int = 0  # control steps the gripper still ignores its command
    gripper_stall_command: float = 0.0  # the command the stalled gripper keeps executing
    extra: dict[str, float] = field(default_factory=dict)


class GauntletEnv:
    """One robosuite task instance. Not thread-safe; one per rollout worker."""

    def __init__(self, config: EnvConfig):
        import robosuite

        # robosuite logs one INFO line per env built ("Loading controller configuration"), which
        # floods job logs with hundreds of envs; its own logger is configured at import time.
        logging.getLogger("robosuite_logs").setLevel(logging.WARNING)

        self.config = config
        self.spec = config.spec
        self._renderer: Any = None
        self.counters = _Counters()
        self.disturbances = _Disturbances()
        _LIVE_ENVS.add(self)
        self.raw = robosuite.make(
            self.spec.robosuite_env,
            robots=config.robot,
            has_renderer=False,
            # Images come from our own lazily created mujoco.Renderer, never from robosuite's.
            has_offscreen_renderer=False,
            use_camera_obs=False,
            use_object_obs=True,
            reward_shaping=False,
            control_freq=config.control_freq,
            ignore_done=True,
            hard_reset=False,
            render_gpu_device_id=egl_device_id(),
            seed=0,
            **dict(self.spec.env_kwargs),
        )
        # Observables would be recomputed on every physics sub-step; nothing here reads them.
        for name in list(self.raw._observables):
            self.raw.modify_observable(name, "enabled", False)
        self._apply_variant()
        m = self.raw.sim.model
        self._object_ids = [m.body_name2id(b) for b in self.spec.objects]
        self._object_joint_adr = {b: self._free_joint_adr(b) for b in self.spec.objects}
        self._eef_site = self.raw.robots[0].eef_site_id["right"]
        self._gripper_qpos_idx = list(self.raw.robots[0]._ref_gripper_joint_pos_indexes["right"])
        self._arm_qvel_idx = list(self.raw.robots[0]._ref_joint_vel_indexes)
        self._fingerprint: str | None = None
        self._target = np.zeros(3)
        self._stepper: Any = None  # the fast path's stepper (None: robosuite's raw.step)
        if config.fast_control:
            from gauntlet.envs.fast_control import FastStepper

            self._stepper = FastStepper(self.raw)
        self.reset(seed=0)

    # ----------------------------------------------------------------------------------- setup
    def _apply_variant(self) -> None:
        """Widens or narrows robosuite's placement samplers to the variant's ranges."""
        sampler_root = self.raw.placement_initializer
        for rng in self.spec.variants[self.config.variant]:
            sampler = sampler_root.samplers[rng.sampler] if rng.sampler else sampler_root
            sampler.x_range = list(rng.x_range)
            sampler.y_range = list(rng.y_range)
            sampler.rotation = rng.rotation if rng.rotation is None else list(rng.rotation)
            sampler.ensure_valid_placement = rng.ensure_valid_placement

    def _free_joint_adr(self, body: str) -> tuple[int, int]:
        """(qpos address, qvel address) of the free joint that carries `body`."""
        m = self.raw.sim.model._model
        bid = self.raw.sim.model.body_name2id(body)
        jnt = int(m.body_jntadr[bid])
        return int(m.jnt_qposadr[jnt]), int(m.jnt_dofadr[jnt])

    def _reseed(self, seed: int) -> None:
        """Points robosuite's env, robot and samplers at one fresh generator seeded by `seed`."""
        rng = np.random.default_rng(seed)
        self.raw.rng = rng
        root = self.raw.placement_initializer
        root.rng = rng
        for sampler in getattr(root, "samplers", {}).values():
            sampler.rng = rng

    # ------------------------------------------------------------------------------- episodes
    def reset(self, seed: int) -> None:
        """Starts an episode; the same seed always gives the same initial state, bit for bit."""
        self._reseed(int(seed))
        self.raw.reset()
        self.counters.steps = 0
        self.disturbances = _Disturbances()
        self._target = self.spec.reset_target(self)

    def step(self, action: np.ndarray) -> bool:
        """Applies one 7-D action; returns whether the task is solved afterwards."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action must have {ACTION_DIM} values, got shape {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError("action contains NaN or inf")
        a = np.clip(a, -1.0, 1.0)
        if self.disturbances.gripper_stall_steps > 0:
            a[GRIPPER_INDEX] = self.disturbances.gripper_stall_command
            self.disturbances.gripper_stall_steps -= 1
        if self._stepper is not None:
            self._stepper.step(a)
        else:
            self.raw.step(a)
        self.counters.steps += 1
        return self.success()

    # ---------------------------------------------------------------------------- observation
    @property
    def sim(self) -> Any:
        return self.raw.sim

    @property
    def eef_pos(self) -> np.ndarray:
        return np.array(self.sim.data.site_xpos[self._eef_site])

    @property
    def eef_quat_xyzw(self) -> np.ndarray:
        mat = self.sim.data.site_xmat[self._eef_site].reshape(3, 3)
        import mujoco

        q = np.zeros(4)
        mujoco.mju_mat2Quat(q, mat.reshape(-1))
        return quat_wxyz_to_xyzw(q)

    @property
    def gripper_qpos(self) -> np.ndarray:
        return np.array(self.sim.data.qpos[self._gripper_qpos_idx])

    def object_pose(self, body: str) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), quaternion (w, x, y, z)) of an object from its free joint."""
        qadr, _ = self._object_joint_adr[body]
        q = self.sim.data.qpos[qadr : qadr + 7]
        return np.array(q[:3]), np.array(q[3:7])

    @property
    def target_pos(self) -> np.ndarray:
        """Where the manipulated object should end up (task-specific)."""
        if self.spec.live_target is not None:
            return self.spec.live_target(self)
        return self._target.copy()

    def proprio_state(self) -> np.ndarray:
        """(8,) float32: eef position, eef axis-angle, gripper finger positions."""
        return np.concatenate(
            [self.eef_pos, quat_xyzw_to_axis_angle(self.eef_quat_xyzw), self.gripper_qpos]
        ).astype(np.float32)

    def object_state(self) -> np.ndarray:
        """(7 * n_objects + 3,) float32: each object's position and xyzw quaternion, then the target."""
        parts = []
        for body in self.spec.objects:
            pos, quat = self.object_pose(body)
            parts += [pos, quat_wxyz_to_xyzw(quat)]
        parts.append(self.target_pos)
        return np.concatenate(parts).astype(np.float32)

    def render(self, camera: str) -> np.ndarray:
        """(H, W, 3) uint8 image from `camera`. Creates the GL context on first use."""
        import mujoco

        size = self.config.image_size
        if self._renderer is None:
            global _EXIT_HOOK_REGISTERED
            self._renderer = mujoco.Renderer(self.sim.model._model, height=size, width=size)
            if not _EXIT_HOOK_REGISTERED:
                atexit.register(_close_renderers)
                _EXIT_HOOK_REGISTERED = True
        self._renderer.update_scene(self.sim.data._data, camera=camera)
        self.counters.renders += 1
        return self._renderer.render().copy()

    def observe(self, images: bool = True) -> dict[str, Any]:
        """One observation with openpi's key names; images only when asked for."""
        self.counters.observe_calls += 1
        obs: dict[str, Any] = {
            STATE_KEY: self.proprio_state(),
            OBJECT_STATE_KEY: self.object_state(),
            PROMPT_KEY: self.spec.instruction,
        }
        if images:
            for cam in self.config.cameras:
                obs[CAMERA_KEYS[cam]] = self.render(cam)
        return obs

    def success(self) -> bool:
        """The task's success predicate on the current state."""
        return self.spec.success(self)

    # ----------------------------------------------------------------------- state & identity
    def get_state(self) -> dict[str, np.ndarray]:
        """Everything the next step depends on, as flat arrays (see `sim_state`)."""
        return capture_state(self.raw, {
            "env/steps": np.array(self.counters.steps),
            "env/target": self._target.copy(),
            "dist/gripper_stall_steps": np.array(self.disturbances.gripper_stall_steps),
            "dist/gripper_stall_command": np.array(self.disturbances.gripper_stall_command),
        })

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Puts this env exactly where `get_state` found it (same env config required)."""
        restore_state(self.raw, state)
        self.counters.steps = int(state["env/steps"])
        self._target = np.array(state["env/target"], dtype=np.float64)
        self.disturbances.gripper_stall_steps = int(state["dist/gripper_stall_steps"])
        self.disturbances.gripper_stall_command = float(state["dist/gripper_stall_command"])

    @property
    def fingerprint(self) -> str:
        """Hash of the model and dynamics settings: scenes replay only under the same one."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_of(self.raw.model.get_xml(), self.config.dynamics_settings())
        return self._fingerprint

    def close_renderer(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def close(self) -> None:
        self.close_renderer()
        self.raw.close()


def make_env(task: str, variant: str = "D0", **kwargs: Any) -> GauntletEnv:
    """Builds a task env; `kwargs` are other `EnvConfig` fields (image_size, cameras, ...)."""
    if "cameras" in kwargs:
        kwargs["cameras"] = tuple(kwargs["cameras"])
    return GauntletEnv(EnvConfig(task=task, variant=variant, **kwargs))
