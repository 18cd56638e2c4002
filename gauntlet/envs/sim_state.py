"""Exact capture and restore of an env's state.

robosuite's flattened state holds only time/qpos/qvel. The next step also depends on MuJoCo's
actuator activations, controls, applied forces and solver warm start, on the arm controller's
goal and interpolation state, on the gripper's integrated command, and on the env wrapper's own
counters (which the wrapper passes in and reads back). All of it goes into one flat
`{name: ndarray}` dict (what a scene stores with `np.savez(allow_pickle=False)`), so a restored scene
continues exactly as the original would have.
"""

from __future__ import annotations

from typing import Any

import numpy as np

STATE_FORMAT = 1
_NONE = "__none__"  # marks an attribute that was None (e.g. OSC's goal before the first action)


def _stateful_objects(raw: Any) -> dict[str, Any]:
    """The robot's controllers and grippers by state-name prefix."""
    robot = raw.robots[0]
    objs: dict[str, Any] = {}
    for name, ctrl in robot.part_controllers.items():
        objs[f"ctrl/{name}"] = ctrl
    for arm, gripper in robot.gripper.items():
        objs[f"gripper/{arm}"] = gripper
    objs["composite"] = robot.composite_controller
    return objs


def _plain_attributes(obj: Any) -> dict[str, Any]:
    """The numeric state of a controller-like object: arrays, scalars and None-valued slots."""
    out: dict[str, Any] = {}
    for key, value in vars(obj).items():
        if key.startswith("__"):
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            out[key] = value
        elif isinstance(value, (bool, int, float, np.number)) and not isinstance(value, type):
            out[key] = value
        elif value is None:
            out[key] = None
    return out


def capture_state(raw: Any, wrapper_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state of robosuite env `raw`, with the wrapper's own entries (`wrapper_state`) after
    robosuite's clock and before the controllers'."""
    import mujoco

    m, d = raw.sim.model._model, raw.sim.data._data
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mj_state = np.empty(mujoco.mj_stateSize(m, spec))
    mujoco.mj_getState(m, d, mj_state, spec)
    state: dict[str, np.ndarray] = {
        "format": np.array(STATE_FORMAT),
        "mj_state": mj_state,
        "env/timestep": np.array(raw.timestep),
        "env/cur_time": np.array(raw.cur_time),
        **wrapper_state,
    }
    for prefix, obj in _stateful_objects(raw).items():
        for key, value in _plain_attributes(obj).items():
            name = f"{prefix}/{key}"
            if value is None:
                state[name] = np.array(_NONE)
            else:
                state[name] = np.array(value, copy=True)
    return state


def restore_state(raw: Any, state: dict[str, np.ndarray]) -> None:
    """Puts robosuite env `raw` exactly where `capture_state` found it (same env config required);
    the wrapper's own entries are left for the wrapper to read back."""
    import mujoco

    if int(state.get("format", -1)) != STATE_FORMAT:
        raise ValueError(f"state format {state.get('format')} is not {STATE_FORMAT}")
    objects = _stateful_objects(raw)
    for name, saved in state.items():
        prefix, _, key = name.rpartition("/")
        obj = objects.get(prefix)
        if obj is None:
            continue
        # Attributes created lazily (e.g. on the first control step) may not exist yet here.
        current = getattr(obj, key, None)
        if saved.dtype.kind == "U" and str(saved) == _NONE:
            setattr(obj, key, None)
        elif isinstance(current, (bool, int, float, np.number)) and saved.ndim == 0:
            setattr(obj, key, type(current)(saved.item()))
        else:
            # A fresh copy, never in place: robosuite sometimes aliases one array under two names
            # (e.g. a controller's initial and current joint positions), and an in-place write
            # through one name would clobber the other.
            setattr(obj, key, np.array(saved, copy=True))
    m, d = raw.sim.model._model, raw.sim.data._data
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    # A fresh contiguous copy: states that arrive through Ray are read-only views, which
    # MuJoCo's bindings refuse.
    mj_state = np.array(state["mj_state"], dtype=np.float64, copy=True)
    if mj_state.shape != (mujoco.mj_stateSize(m, spec),):
        raise ValueError(f"mj_state has {mj_state.shape} values, this model needs {mujoco.mj_stateSize(m, spec)}")
    mujoco.mj_setState(m, d, mj_state, spec)
    mujoco.mj_forward(m, d)
    raw.timestep = int(state["env/timestep"])
    raw.cur_time = float(state["env/cur_time"])
    raw.done = False
