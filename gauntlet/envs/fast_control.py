"""A fast, bit-exact replacement for robosuite's `env.step` with the Panda OSC_POSE + gripper stack.

robosuite 1.5's `MujocoEnv.step` runs `control_timestep / model_timestep` (25) physics sub-steps per
action, and on every one of them its Python controller stack (composite controller -> OSC arm
controller -> gripper controller -> actuator clipping) re-reads bindings by name, rebuilds small
arrays and recomputes what is constant over the control step. This module runs the same arithmetic,
in the same order and on the same kinds of arrays, with that overhead hoisted out:

* once per control step: robosuite's *own* `set_goal` (goal pose, action scaling, gripper command
  integration: Python-heavy but once per step, so left untouched and exact by construction), then
  the per-step constants (goal in world frame, gains, actuator ranges, the gripper's actuator
  command, which does not change between sub-steps);
* per sub-step: `mj_step1`, the controller's state update into preallocated buffers (`mj_jacSite`,
  `mj_fullM`), numpy's `np.dot` for every product robosuite computes with numpy, one call of a numba
  kernel (`_osc_kernel`) for everything robosuite computes in numba (`orientation_error`,
  `opspace_matrices`, `nullspace_torques`, which it calls) plus the element-wise arithmetic around
  them, then the actuator clip and `mj_step2`;
* after the last sub-step: the controller attributes robosuite would have left (what `sim_state`
  captures), written the way robosuite writes them (in place where robosuite writes in place, so an
  attribute aliased to another behaves the same).

Nothing read from the simulator or the controllers is cached across control steps: every step starts
from whatever `set_state`, a reset or an injector left. What robosuite's `step` does besides the
controller and this path skips is irrelevant to later states (see `FastStepper`). numba is already
robosuite's dependency (its controller math is numba code); the kernel compiles once (~5-15 s on 2
cores) into numba's on-disk cache (`__pycache__`), which later processes load in well under a second.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from numba import carray, farray, njit, types
from numba.extending import intrinsic
from robosuite.utils.control_utils import nullspace_torques, opspace_matrices, orientation_error

from gauntlet.envs.fast_control_scope import contiguous_run, unsupported_reason

# The ufunc `np.clip` ends in (its Python wrappers cost more than the clip itself on 7 values).
_CLIP = getattr(getattr(np, "_core", None), "umath", np).clip


def _zero_product_is_plus_zero(nv: int) -> bool:
    """Whether numpy's BLAS gives +0.0 (never -0.0) for an all-zero (3, nv) matrix times any finite
    vector, as it does when it starts each sum from +0.0. Then robosuite's base-site velocity term,
    `-(ref_vel - J_base . qvel)` with the base welded (J_base == 0), is exactly `-ref_vel`: x - (+0.0)
    is x for every x, -0.0 included. Probed with the vectors that would expose a sum started from the
    first product (all products -0.0). MuJoCo resets non-finite qvel in mj_step1."""
    zero = np.zeros((3, nv))
    probes = (-np.ones(nv), np.full(nv, -0.0), -np.arange(1.0, nv + 1.0), np.ones(nv))
    return all(not np.signbit(np.dot(zero, v)).any() for v in probes)


# ------------------------------------------------------------------------------ numba kernel
# One numba call per sub-step in place of ~30 small numpy/numba calls. Its arrays live in buffers
# whose addresses are passed in one int64 vector: numba's dispatcher costs ~0.4 us per argument.
# Exactness: it calls robosuite's own jitted functions with arguments of the same numba types
# (layout C/F, aligned, mutable), so they compile to the same code as robosuite's own calls (a C- instead
# of an F-ordered mass matrix, say, would switch BLAS routines and change the last bits); the element-wise arithmetic
# is the same IEEE operations in the same order (numba compiles without fast-math, so LLVM neither
# reorders nor fuses them into FMAs); every product robosuite does with numpy stays outside, in numpy.
@intrinsic
def _float_ptr(typingctx: Any, address: Any) -> Any:
    """An int64 address as a float64 pointer, for `carray`/`farray` views of a buffer."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float64)))

    return types.CPointer(types.float64)(address), codegen


# The buffers and MjData views the kernel reads and writes, in the order of its pointer vector.
_SLOTS = ("jacp", "jacr", "full_mass", "qpos_arm", "qvel_arm", "xpos", "xmat", "ref_pos_vel", "ref_ori_vel",
          "dwp", "dwo", "kp", "kd", "initial_joint", "ref_pos", "ref_ori_mat", "J_full", "J_pos", "J_ori",
          "mass_matrix", "joint_pos", "joint_vel", "lambda_pos", "lambda_ori", "force", "torque", "null")


@njit(cache=True)
def _osc_kernel(p: np.ndarray) -> None:  # pragma: no cover - compiled
    """`Controller.update`'s copies + `OperationalSpaceController.run_controller` up to its numpy
    products: orientation error, desired force/torque (base velocity +0, see
    `_zero_product_is_plus_zero`), `opspace_matrices`, `nullspace_torques`. p = (nv, arm dof offset,
    n joints, addresses in `_SLOTS` order)."""
    nv, a0, nj = p[0], p[1], p[2]
    jacp, jacr = carray(_float_ptr(p[3]), (3, nv)), carray(_float_ptr(p[4]), (3, nv))
    full = carray(_float_ptr(p[5]), (nv, nv))
    qpos, qvel = carray(_float_ptr(p[6]), nj), carray(_float_ptr(p[7]), nj)
    xpos, xmat = carray(_float_ptr(p[8]), 3), carray(_float_ptr(p[9]), (3, 3))
    rpv, rov = carray(_float_ptr(p[10]), 3), carray(_float_ptr(p[11]), 3)
    dwp, dwo = carray(_float_ptr(p[12]), 3), carray(_float_ptr(p[13]), (3, 3))
    kp, kd, init = carray(_float_ptr(p[14]), 6), carray(_float_ptr(p[15]), 6), carray(_float_ptr(p[16]), nj)
    ref_pos, ref_ori = carray(_float_ptr(p[17]), 3), carray(_float_ptr(p[18]), (3, 3))
    J_full, J_pos, J_ori = (carray(_float_ptr(p[19]), (6, nj)), carray(_float_ptr(p[20]), (3, nj)),
                            carray(_float_ptr(p[21]), (3, nj)))
    mass = farray(_float_ptr(p[22]), (nj, nj))
    jp, jv = carray(_float_ptr(p[23]), nj), carray(_float_ptr(p[24]), nj)
    lp, lo = farray(_float_ptr(p[25]), (3, 3)), farray(_float_ptr(p[26]), (3, 3))
    force, torque, null = carray(_float_ptr(p[27]), 3), carray(_float_ptr(p[28]), 3), carray(_float_ptr(p[29]), nj)
    ref_pos[:] = xpos
    ref_ori[:, :] = xmat
    J_pos[:, :] = jacp[:, a0:a0 + nj]  # J_pos / J_ori are the row blocks of J_full
    J_ori[:, :] = jacr[:, a0:a0 + nj]
    jp[:] = qpos
    jv[:] = qvel
    mass[:, :] = full[a0:a0 + nj, a0:a0 + nj]
    ori_error = orientation_error(dwo, ref_ori)
    for j in range(3):
        force[j] = (dwp[j] - ref_pos[j]) * kp[j] + (-rpv[j]) * kd[j]
        torque[j] = ori_error[j] * kp[3 + j] + (-rov[j]) * kd[3 + j]
    _, lambda_pos, lambda_ori, nullspace = opspace_matrices(mass, J_full, J_pos, J_ori)
    lp[:, :] = lambda_pos
    lo[:, :] = lambda_ori
    null[:] = nullspace_torques(mass, nullspace, init, jp, jv)


def _address(a: np.ndarray) -> int:
    """The data address of `a`, which the kernel reads as a contiguous float64 block: a copy made
    by a reshape or a fancy index (instead of a view) would silently be read stale."""
    if a.dtype != np.float64 or not (a.flags.c_contiguous or a.flags.f_contiguous):
        raise ValueError(f"kernel buffers must be contiguous float64, got {a.dtype} with flags {a.flags}")
    return int(a.__array_interface__["data"][0])


class _Buffers:
    """The controller state of one sub-step (what `Controller.update` computes), the step's
    constants and the kernel's outputs, in fixed arrays of robosuite's layouts."""

    def __init__(self, nj: int):
        self.ref_pos, self.ref_ori_mat = np.zeros(3), np.zeros((3, 3))
        self.ref_pos_vel, self.ref_ori_vel = np.zeros(3), np.zeros(3)
        # J_pos / J_ori are C-contiguous row blocks of J_full: robosuite's values and layout.
        self.J_full = np.zeros((6, nj))
        self.J_pos, self.J_ori = self.J_full[:3], self.J_full[3:]
        # Fortran order, like robosuite's `mass_matrix[idx, :][:, idx]`: numba compiles another
        # specialisation for a C-ordered matrix, whose BLAS calls round differently.
        self.mass_matrix = np.zeros((nj, nj), order="F")
        self.joint_pos, self.joint_vel = np.zeros(nj), np.zeros(nj)
        self.dwp, self.dwo = np.zeros(3), np.zeros((3, 3))  # the goal in world coordinates
        self.kp, self.kd, self.initial_joint = np.zeros(6), np.zeros(6), np.zeros(nj)
        self.lambda_pos, self.lambda_ori = np.zeros((3, 3), order="F"), np.zeros((3, 3), order="F")  # as pinv's
        self.force, self.torque, self.null = np.zeros(3), np.zeros(3), np.zeros(nj)


class _Layout:
    """Per-model ids, index slices, cached MjData views and buffers (valid while the env keeps its
    MjSim; the views stay valid because MuJoCo never reallocates its arrays)."""

    def __init__(self, raw: Any):
        robot = raw.robots[0]
        self.sim = raw.sim  # the MjSim this was made for
        self.m, self.d = m, d = raw.sim.model._model, raw.sim.data._data
        self.arm_name = robot.arms[0]  # part-controller keys ("right", "right_gripper")
        self.grip_name = robot.get_gripper_name(self.arm_name)
        arm = robot.composite_controller.part_controllers[self.arm_name]
        grip = robot.composite_controller.part_controllers[self.grip_name]
        acts = robot._ref_actuators_indexes_dict
        self.ref_site = m.site(arm.ref_name).id  # the OSC's reference site (the grip site)
        self.base_site = m.site(f"{arm.naming_prefix}{arm.part_name}_center").id
        arm_v = contiguous_run(arm.qvel_index)
        self.grip_q, self.grip_v = contiguous_run(grip.qpos_index), contiguous_run(grip.qvel_index)
        self.arm_act, self.grip_act = contiguous_run(acts[self.arm_name]), contiguous_run(acts[self.grip_name])
        self.qpos, self.qvel, self.qM = d.qpos, d.qvel, d.qM
        self.qpos_arm, self.qvel_arm = d.qpos[contiguous_run(arm.qpos_index)], d.qvel[arm_v]
        self.bias_arm = d.qfrc_bias[arm_v]  # the OSC's `torque_compensation`
        self.ctrl_arm, self.ctrl_grip = d.ctrl[self.arm_act], d.ctrl[self.grip_act]
        self.xpos, self.xmat = d.site_xpos[self.ref_site], d.site_xmat[self.ref_site].reshape(3, 3)
        self.base_xpos, self.base_xmat = d.site_xpos[self.base_site], d.site_xmat[self.base_site]
        for view, whole in ((self.xmat, d.site_xmat), (self.qpos_arm, d.qpos), (self.ctrl_arm, d.ctrl)):
            if not np.shares_memory(view, whole):  # a copy would be read (or written) stale
                raise RuntimeError("expected a view of MjData")
        # (3, nv) like robosuite's `get_site_jacp/jacr`, and their arm columns as views.
        self.jacp, self.jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        self.jacp_arm, self.jacr_arm = self.jacp[:, arm_v], self.jacr[:, arm_v]
        self.full_mass = np.zeros((m.nv, m.nv))  # mj_fullM's output, and the arm block of it
        self.mass_view = self.full_mass[arm_v, arm_v]
        self.base_jacp, self.base_jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        self.buf = b = _Buffers(len(arm.qvel_index))
        # The kernel needs the base velocity to be an exact +0 (else every sub-step runs in Python).
        self.use_kernel = _zero_product_is_plus_zero(m.nv)
        arrays = {**vars(self), **vars(b)}
        self.pointers = np.array([m.nv, arm_v.start, len(arm.qvel_index)] + [_address(arrays[name]) for name in _SLOTS],
                                 dtype=np.int64)
        self.wrench = np.zeros(6)  # the decoupled force and torque
        self.torques = np.zeros(len(arm.qvel_index))  # the last sub-step's OSC torques (unclipped)
        self.grip_joint: tuple[np.ndarray, np.ndarray] | None = None  # the gripper's last update (qpos, qvel)


def _update(lay: _Layout) -> _Buffers:
    """robosuite's `Controller.update` + `update_reference_data` (lite physics: no mj_forward) into
    the buffers; the velocities are numpy products, as in robosuite's `get_site_xvelp/xvelr`."""
    s = lay.buf
    # One call fills both: mj_jac computes the translational and rotational rows independently,
    # so they equal robosuite's two separate calls.
    mujoco.mj_jacSite(lay.m, lay.d, lay.jacp, lay.jacr, lay.ref_site)
    s.ref_pos[:] = lay.xpos
    s.ref_ori_mat[:] = lay.xmat
    s.ref_pos_vel[:] = np.dot(lay.jacp, lay.qvel)
    s.ref_ori_vel[:] = np.dot(lay.jacr, lay.qvel)
    s.J_pos[:] = lay.jacp_arm
    s.J_ori[:] = lay.jacr_arm
    s.joint_pos[:] = lay.qpos_arm
    s.joint_vel[:] = lay.qvel_arm
    mujoco.mj_fullM(lay.m, lay.full_mass, lay.qM)
    s.mass_matrix[:] = lay.mass_view
    return s


def _write_back(arm: Any, s: _Buffers) -> None:
    """Leaves the arm controller's attributes as robosuite's update leaves them: reference data and
    Jacobians written in place (robosuite aliases some of them, e.g. `initial_ref_pos` after a reset),
    joint state and mass matrix as new arrays."""
    arm.ref_pos[:] = s.ref_pos
    arm.ref_ori_mat[:, :] = s.ref_ori_mat
    arm.ref_pos_vel[:] = s.ref_pos_vel
    arm.ref_ori_vel[:] = s.ref_ori_vel
    arm.J_pos[:, :] = s.J_pos
    arm.J_ori[:, :] = s.J_ori
    arm.J_full[:, :] = s.J_full
    arm.joint_pos = s.joint_pos.copy()
    arm.joint_vel = s.joint_vel.copy()
    arm.mass_matrix = s.mass_matrix.copy(order="F")


class _StepConstants:
    """What robosuite recomputes on every sub-step from values that do not change until the next
    action (goal, gains, actuator ranges, the gripper's command)."""

    def __init__(self, lay: _Layout, arm: Any, grip: Any):
        # OSC.run_controller, base frame: the goal in world coordinates from the (welded) base's pose.
        self.desired_world_pos = arm.origin_pos + np.dot(arm.origin_ori, arm.goal_pos)
        self.desired_world_ori = np.dot(arm.origin_ori, arm.goal_ori)
        self.kp_pos, self.kd_pos = np.array(arm.kp[0:3]), arm.kd[0:3]
        self.kp_ori, self.kd_ori = np.array(arm.kp[3:6]), arm.kd[3:6]
        self.initial_joint = arm.initial_joint  # the nullspace posture target
        ranges = lay.m.actuator_ctrlrange
        self.arm_low, self.arm_high = ranges[lay.arm_act, 0], ranges[lay.arm_act, 1]
        # SimpleGripController.run_controller (action scaling, no interpolator), then the robot's clip.
        desired_qvel = np.array(grip.goal_qvel)
        ctrl_range = np.stack([grip.actuator_min, grip.actuator_max], axis=-1)
        bias = 0.5 * (ctrl_range[:, 1] + ctrl_range[:, 0])
        weight = 0.5 * (ctrl_range[:, 1] - ctrl_range[:, 0])
        self.grip_vels = bias + weight * desired_qvel  # the gripper controller's `vels`
        self.grip_ctrl = np.clip(self.grip_vels, ranges[lay.grip_act, 0], ranges[lay.grip_act, 1])
        b = lay.buf  # the kernel's copies
        b.dwp[:], b.dwo[:], b.initial_joint[:] = self.desired_world_pos, self.desired_world_ori, arm.initial_joint
        b.kp[:], b.kd[:] = arm.kp, arm.kd


def _policy_step(lay: _Layout, comp: Any, arm: Any, grip: Any, action: np.ndarray) -> tuple[_StepConstants, bool]:
    """`FixedBaseRobot.control`'s policy-step part: the base pose, then robosuite's own `set_goal`
    (goal pose, action scaling, gripper command integration), with the controller updates it would
    run done by `_update` first (identical values; robosuite's own update then has nothing to do).
    Also says whether the arm was updated now (else it keeps the state a reset left)."""
    # CompositeController.update_state -> OSC.update_origin, as robosuite writes it.
    arm.update_origin(np.array(lay.base_xpos), np.array(lay.base_xmat.reshape([3, 3])))
    fresh = bool(arm.new_update)
    if fresh:
        _write_back(arm, _update(lay))
        arm.new_update = False
    if grip.new_update:
        grip.joint_pos = np.array(lay.qpos[lay.grip_q])
        grip.joint_vel = np.array(lay.qvel[lay.grip_v])
        grip.new_update = False
    comp.set_goal(action)
    return _StepConstants(lay, arm, grip), fresh


def _python_torques(lay: _Layout, k: _StepConstants, st: Any) -> np.ndarray:
    """`OperationalSpaceController.run_controller` (no interpolators, base frame, uncoupled) on the
    state `st` (the controller itself, or `lay.buf`): robosuite's operations, order and layouts."""
    ori_error = orientation_error(k.desired_world_ori, st.ref_ori_mat)
    position_error = k.desired_world_pos - st.ref_pos
    if lay.use_kernel:  # -(v - (+0.0)) == -v exactly (see _zero_product_is_plus_zero)
        vel_pos_error, vel_ori_error = -st.ref_pos_vel, -st.ref_ori_vel
    else:
        mujoco.mj_jacSite(lay.m, lay.d, lay.base_jacp, lay.base_jacr, lay.base_site)
        vel_pos_error = -(st.ref_pos_vel - np.dot(lay.base_jacp, lay.qvel))
        vel_ori_error = -(st.ref_ori_vel - np.dot(lay.base_jacr, lay.qvel))
    desired_force = np.multiply(position_error, k.kp_pos) + np.multiply(vel_pos_error, k.kd_pos)
    desired_torque = np.multiply(ori_error, k.kp_ori) + np.multiply(vel_ori_error, k.kd_ori)
    _, lambda_pos, lambda_ori, nullspace = opspace_matrices(st.mass_matrix, st.J_full, st.J_pos, st.J_ori)
    wrench = np.concatenate([np.dot(lambda_pos, desired_force), np.dot(lambda_ori, desired_torque)])
    torques = np.dot(st.J_full.T, wrench)
    torques += lay.bias_arm
    torques += nullspace_torques(st.mass_matrix, nullspace, k.initial_joint, st.joint_pos, st.joint_vel)
    return torques


def _substeps(lay: _Layout, comp: Any, arm: Any, grip: Any, action: np.ndarray, n: int) -> _StepConstants:
    """robosuite's sub-step loop (lite physics): mj_step1, `_pre_action` -> `FixedBaseRobot.control`
    -> composite `run_controller`, mj_step2. Returns the step's constants; the last sub-step's arm
    state is left in `lay.buf`, its torques in `lay.torques`."""
    m, d, b = lay.m, lay.d, lay.buf
    step1, step2, jac_site, full_m, dot, clip = (mujoco.mj_step1, mujoco.mj_step2, mujoco.mj_jacSite,
                                                 mujoco.mj_fullM, np.dot, _CLIP)
    jacp, jacr, qvel, full_mass, qM, pointers = lay.jacp, lay.jacr, lay.qvel, lay.full_mass, lay.qM, lay.pointers
    ctrl_arm, ctrl_grip, bias_arm, J_full_T = lay.ctrl_arm, lay.ctrl_grip, lay.bias_arm, b.J_full.T
    wrench, wrench_pos, wrench_ori = lay.wrench, lay.wrench[:3], lay.wrench[3:]
    for i in range(n):
        step1(m, d)
        if i == 0:
            k, fresh = _policy_step(lay, comp, arm, grip, action)
            lo, hi, grip_ctrl = k.arm_low, k.arm_high, k.grip_ctrl
        if i == 0 and not (fresh and lay.use_kernel):
            # run_controller's update has nothing to do on the policy step; here the controller
            # still holds what a reset left (or the kernel is off): robosuite's code on its attributes.
            torques = _python_torques(lay, k, arm)
        elif not lay.use_kernel:
            torques = _python_torques(lay, k, _update(lay))
        else:  # _update + _python_torques, the numba part in one call
            if i > 0:  # (on the policy step `_update` has just filled the buffers from this data)
                jac_site(m, d, jacp, jacr, lay.ref_site)
                full_m(m, full_mass, qM)
                # `out=` runs the same BLAS call as a fresh result: numpy zeroes either, then dgemv.
                dot(jacp, qvel, out=b.ref_pos_vel)
                dot(jacr, qvel, out=b.ref_ori_vel)
            _osc_kernel(pointers)
            dot(b.lambda_pos, b.force, out=wrench_pos)  # robosuite: concatenate of the two products
            dot(b.lambda_ori, b.torque, out=wrench_ori)
            torques = dot(J_full_T, wrench)
            torques += bias_arm
            torques += b.null
        # FixedBaseRobot.control: clip to the actuators' ctrlrange, write ctrl.
        clip(torques, lo, hi, out=ctrl_arm)
        ctrl_grip[:] = grip_ctrl
        if i == n - 1 and i > 0:  # the gripper controller's last update reads qpos before mj_step2
            lay.grip_joint = (np.array(lay.qpos[lay.grip_q]), np.array(lay.qvel[lay.grip_v]))
        step2(m, d)
    lay.torques = torques
    return k


class FastStepper:
    """Steps a robosuite env exactly as `raw.step(action)` would, minus its Python overhead.

    Besides the controllers, robosuite's `step` also samples the enabled observables on each sub-step
    and builds an observation dict at the end (side-effect free, checked by `unsupported_reason`;
    Gauntlet reads observations from MuJoCo itself), computes the reward (whose `_check_success`
    caches, e.g. PickPlace's `objects_in_bins`, are rewritten in full by every later call that reads
    them and are not part of the captured state), and pushes the robot's `recent_*` history buffers
    (read only by robot observables, all disabled, and not captured either). None of it feeds back
    into the dynamics, the controller state or Gauntlet's observations, so this path leaves it out.
    """

    def __init__(self, raw: Any):
        self.raw = raw
        self._layout: _Layout | None = None
        self._checked: Any = None  # the composite controller last validated (robosuite rebuilds it on reset)
        self.reason: str | None = unsupported_reason(raw)  # why steps fall back to raw.step; None: they don't

    def _current_layout(self) -> _Layout | None:
        raw = self.raw
        comp = raw.robots[0].composite_controller
        if comp is not self._checked:
            self.reason = unsupported_reason(raw)
            self._checked = comp
        if self.reason is not None:
            return None
        if self._layout is None or self._layout.sim is not raw.sim:
            self._layout = _Layout(raw)
        return self._layout

    def step(self, action: np.ndarray) -> None:
        """One control step of `action` (the robot's full action vector), like `raw.step(action)`."""
        lay = self._current_layout()
        if lay is None:
            self.raw.step(action)
            return
        raw = self.raw
        if raw.done:
            raise ValueError("executing action in terminated episode")
        if len(action) != raw.action_dim:
            raise ValueError(f"expected an action of {raw.action_dim} values, got {len(action)}")
        raw.timestep += 1
        comp = raw.robots[0].composite_controller
        arm, grip = comp.part_controllers[lay.arm_name], comp.part_controllers[lay.grip_name]
        n = int(raw.control_timestep / raw.model_timestep)
        k = _substeps(lay, comp, arm, grip, action, n)
        raw.cur_time += raw.control_timestep
        raw.done = (raw.timestep >= raw.horizon) and not raw.ignore_done
        # The controllers' attributes as robosuite's last sub-step leaves them.
        if n > 1:
            _write_back(arm, lay.buf)
            grip.joint_pos, grip.joint_vel = lay.grip_joint
        arm.torques = lay.torques
        arm.new_update = grip.new_update = True
        grip.vels = k.grip_vels
