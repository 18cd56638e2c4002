"""Which robosuite configurations the fast stepping path (`fast_control.FastStepper`) reproduces.

The fast path replays one controller stack exactly: one fixed-base robot, robosuite's composite
controller with an OSC_POSE arm (base frame, uncoupled, lite physics, no interpolators) and a simple
gripper, contiguous index runs, and observables that only read the simulator. `unsupported_reason`
says why any other environment keeps robosuite's own `step`.
"""

from __future__ import annotations

from typing import Any

from robosuite.controllers.composite.composite_controller import CompositeController
from robosuite.controllers.parts.arm.osc import OperationalSpaceController
from robosuite.controllers.parts.gripper.simple_grip import SimpleGripController
from robosuite.environments.base import MujocoEnv
from robosuite.environments.robot_env import RobotEnv
from robosuite.robots.fixed_base_robot import FixedBaseRobot


def unsupported_reason(raw: Any) -> str | None:
    """Why `raw` cannot be stepped by the fast path (None: it can). The fast path reproduces one
    configuration exactly; anything else keeps robosuite's own `step`."""
    env_cls = type(raw)
    if env_cls.step is not MujocoEnv.step or env_cls._pre_action is not RobotEnv._pre_action:
        return f"{env_cls.__name__} overrides step/_pre_action"
    if env_cls._post_action is not MujocoEnv._post_action:
        return f"{env_cls.__name__} overrides _post_action"
    if not raw.lite_physics:
        return "lite_physics is off (robosuite then calls mj_forward + mj_step per sub-step)"
    side_effects = _observables_with_side_effects(raw)
    if side_effects:
        return f"observables {side_effects} may have side effects (custom sensor, corrupter, filter or delayer)"
    if len(raw.robots) != 1 or type(raw.robots[0]) is not FixedBaseRobot:
        return "not exactly one fixed-base robot"
    robot = raw.robots[0]
    comp = robot.composite_controller
    if type(comp) is not CompositeController or len(robot.arms) != 1:
        return f"composite controller {type(comp).__name__} with arms {robot.arms}"
    arm_name = robot.arms[0]
    grip_name = robot.get_gripper_name(arm_name)
    if list(comp.part_controllers) != [arm_name, grip_name]:
        return f"part controllers {list(comp.part_controllers)}"
    if not all(robot._enabled_parts.get(p, False) for p in (arm_name, grip_name)):
        return "a part controller is disabled"
    arm, grip = comp.part_controllers[arm_name], comp.part_controllers[grip_name]
    acts = robot._ref_actuators_indexes_dict
    for idx in (arm.qpos_index, arm.qvel_index, grip.qpos_index, grip.qvel_index, acts[arm_name], acts[grip_name]):
        if contiguous_run(idx) is None:
            return f"index list {list(idx)} is not one contiguous run"
    return _osc_unsupported(arm, raw) or _gripper_unsupported(grip)


def _observables_with_side_effects(raw: Any) -> list[str]:
    """The enabled observables whose per-sub-step sampling might do more than read the simulator.

    Gauntlet disables every observable, but NutAssembly and PickPlace re-enable the active object's
    four sensors on every reset. robosuite's stock sensors copy simulator arrays into its observation
    cache (object pos, `convert_quat` of xquat: fancy-index copies; the relative-pose ones return a
    default while the gripper pose sensor stays disabled) and nothing in Gauntlet reads that cache, so
    skipping them changes nothing; a custom sensor or a noisy corrupter/delayer (which would draw
    random numbers) is another matter.
    """
    from robosuite.utils.observables import NO_CORRUPTION, NO_DELAY, NO_FILTER

    return sorted(
        name for name, obs in raw._observables.items()
        if obs.is_enabled() and (
            obs._corrupter is not NO_CORRUPTION or obs._filter is not NO_FILTER or obs._delayer is not NO_DELAY
            or not getattr(obs._sensor, "__module__", "").startswith("robosuite.")
            or obs.modality == "image")
    )


def _osc_unsupported(arm: Any, raw: Any) -> str | None:
    """The OSC variants `_python_torques` / `_osc_kernel` do not reproduce (other branches in robosuite)."""
    if type(arm) is not OperationalSpaceController:
        return f"arm controller {type(arm).__name__}"
    if arm.interpolator_pos is not None or arm.interpolator_ori is not None:
        return "OSC interpolators are on"
    if arm.input_ref_frame != "base" or not arm.uncoupling or not arm.lite_physics or arm.num_ref_sites != 1:
        return "OSC not in base frame / uncoupled / lite physics / one reference site"
    # The goal is turned into world coordinates once per control step, with the base pose robosuite
    # reads on the first sub-step: exact only if the base cannot move between sub-steps.
    m = raw.sim.model._model
    center = m.site(f"{arm.naming_prefix}{arm.part_name}_center").id
    if m.body_weldid[m.site_bodyid[center]] != 0:
        return "the controller's base site is not welded to the world"
    return None


def _gripper_unsupported(grip: Any) -> str | None:
    if type(grip) is not SimpleGripController:
        return f"gripper controller {type(grip).__name__}"
    if grip.interpolator is not None or not grip.use_action_scaling:
        return "gripper interpolator on or action scaling off"
    return None


def contiguous_run(idx: Any) -> slice | None:
    """robosuite's index list as a slice (same elements, views instead of fancy-index copies), or
    None if it is not one contiguous run."""
    idx = [int(i) for i in idx]
    if not idx or idx != list(range(idx[0], idx[0] + len(idx))):
        return None
    return slice(idx[0], idx[0] + len(idx))
