"""Scripted experts: one reactive waypoint controller on privileged state, run on each task's waypoints.

Every `act()` re-reads the simulator (object pose, grasp contacts, finger opening, target) and
picks its phase from that state alone, so the same expert that collects demonstrations also
recovers from injected errors: started from any mid-task state it carries on from there. The only
memory is two short timers where physics needs time (fingers closing on, or opening off, the
object) and two hysteresis flags (inside the final descent; carrying vs lifting).

The expert controls the *object*, not the end effector, once it holds something: the eef goal is
`eef + (object goal - object)`, so an off-centre grasp (the square nut is held by its handle, a
cube may slip in the fingers) or a grasp that moved does not bias where the object ends up.

What differs between tasks (where to grasp, carry, place; heights; symmetries) is declared by each
task's `Waypoints` (gauntlet/envs/tasks/); this module holds the script they all share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gauntlet.envs.rotations import mat_to_axis_angle, quat_wxyz_to_mat, wrap_angle
from gauntlet.envs.tasks.scene import Q7_SAFE_RAD, is_grasped, wrist_q7
from gauntlet.keys import ACTION_DIM, GRIPPER_INDEX

if TYPE_CHECKING:
    from gauntlet.envs.env import GauntletEnv

PHASES = ("approach", "descend", "grasp", "lift", "transport", "place", "release", "retreat", "done")

POS_SCALE_M = 0.05  # OSC maps action 1.0 to this position delta per step (robosuite default_panda)
ROT_SCALE_RAD = 0.5  # and to this axis-angle delta per step
FINGER_OPEN_M = 0.070  # finger gap (qpos[0] - qpos[1]) above which the gripper counts as open
FINGER_EMPTY_M = 0.008  # gap below which a closed gripper holds nothing
GRASP_TIMEOUT_STEPS = 14  # closing longer than this without a grasp means the grasp missed
RELEASE_STEPS = 6  # steps to open before moving away, so the object is not dragged along
NOISE_AXIS_SCALE = np.array([1.0, 1.0, 1.0, 0.2, 0.2, 0.2])  # noise_std multiplier per action dim
HOVER_M = 0.08  # approach height above the grasp point: clears a cube, nut or can rim


# ------------------------------------------------------------------------------------ geometry
def down_rotation(yaw: float) -> np.ndarray:
    """Eef orientation pointing straight down with the finger-closing axis (eef x) at `yaw`.

    On the Panda the fingers slide along the eef site's x axis and its z axis points out of the
    palm, so a top-down grasp is z = -world z, x = (cos yaw, sin yaw, 0), y = z cross x.
    """
    x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.stack([x, np.cross(z, x), z], axis=1)


def gripper_yaw(eef_rot: np.ndarray) -> float:
    """Heading of the finger-closing axis in the table plane."""
    return float(np.arctan2(eef_rot[1, 0], eef_rot[0, 0]))


def finger_gap(env: GauntletEnv) -> float:
    q = env.gripper_qpos
    return float(q[0] - q[1])


def grasp_point(env: GauntletEnv) -> np.ndarray:
    """Where the fingertips' centre should be to grasp the manipulated object (the task says)."""
    return env.spec.waypoints.grasp_point(env)


def grasp_yaw(env: GauntletEnv, current_yaw: float) -> float:
    """Gripper yaw for grasping: of the yaws the object's symmetry allows, the nearest one that
    keeps wrist joint 7 inside its limits.

    The nearest equivalent keeps wrist turns under 45 deg (cube) / 90 deg (nut) and makes the choice
    continuous as the object turns; but a wrist already near its limit (after a shove, or many
    regrasps one way) cannot turn further that way and stalls the whole OSC, so it turns the other
    way round instead. Turning the gripper's yaw by d moves q7 by about -d (the eef points down).
    """
    waypoints = env.spec.waypoints
    pos = env.object_pose(env.spec.manipulated)[0]
    base, period = waypoints.grasp_heading(env, current_yaw, waypoints.yaw_period)
    q7 = wrist_q7(env)
    obstacle = waypoints.grasp_obstacle(env)
    first = wrap_angle(base - current_yaw, period)
    best, best_cost = first, np.inf
    for k in range(-4, 5):
        d = first + k * period
        if abs(d) > np.pi + 1e-9:
            continue
        cost = abs(d) + (10.0 + abs(q7 - d) if abs(q7 - d) > Q7_SAFE_RAD else 0.0)
        if obstacle is not None:
            cost += 3.0 * _finger_towards(pos, current_yaw + d, obstacle)
        if cost < best_cost:
            best, best_cost = d, cost
    return current_yaw + best


def _finger_towards(pos: np.ndarray, yaw: float, obstacle: np.ndarray) -> float:
    """How much a closing axis at `yaw` points a finger at an obstacle less than 11 cm away: |cos|
    of the angle between them, 0 when the obstacle is far."""
    d = obstacle[:2] - pos[:2]
    dist = float(np.linalg.norm(d))
    if dist > 0.11:
        return 0.0
    return abs(np.cos(yaw) * d[0] + np.sin(yaw) * d[1]) / dist


def _limit(v: np.ndarray, max_norm: float) -> np.ndarray:
    """Scales a command down to `max_norm`, keeping its direction (per-axis clipping would bend
    straight-line motions into dog-legs)."""
    n = float(np.linalg.norm(v))
    return v * (max_norm / n) if n > max_norm else v


# ------------------------------------------------------------------------------------ expert
@dataclass
class ExpertResult:
    """What one expert rollout did."""

    success: bool  # the task predicate held at the last step
    steps: int  # control steps taken (the rollout stops at the first success)
    phases: list[str] = field(default_factory=list)  # the expert's phase at every step


class ScriptedExpert:
    """A reactive pick-and-place script for one env (see the module docstring)."""

    pos_gain = 1.5  # action per (position error / POS_SCALE_M); > 1 compensates the OSC's lag
    rot_gain = 1.0  # action per (orientation error / ROT_SCALE_RAD)

    def __init__(self, env: GauntletEnv, seed: int = 0, noise_std: float = 0.0):
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.env = env
        self.seed = int(seed)
        self.noise_std = float(noise_std)
        self.waypoints = env.spec.waypoints
        self.reset()

    def reset(self) -> None:
        """Forgets timers and re-seeds the noise, so a rollout replays bit for bit."""
        self._rng = np.random.default_rng(self.seed)
        self._phase = "approach"
        self._grasp_steps = 0  # consecutive steps spent closing at the grasp pose
        self._release_steps = 0  # consecutive steps spent opening after placing
        self._placing = False  # hysteresis: inside the final descent

    @property
    def phase(self) -> str:
        return self._phase

    # --------------------------------------------------------------------------------- policy
    def act(self) -> np.ndarray:
        env = self.env
        eef = env.eef_pos
        rot = quat_wxyz_to_mat(np.roll(env.eef_quat_xyzw, 1))
        yaw = gripper_yaw(rot)
        obj = env.object_pose(env.spec.manipulated)[0]
        gp = grasp_point(env)
        gap = finger_gap(env)
        grasped = is_grasped(env) and float(np.linalg.norm(gp - eef)) < 0.04

        move = np.zeros(3)  # desired eef displacement this step (metres)
        speed = 1.0  # cap on the position action's norm
        target_yaw = yaw
        grip = -1.0

        holds = self.waypoints.holds_at_target
        if env.success() and (not holds or grasped):
            phase = "done"
            grip = 1.0 if holds else -1.0
            if not holds and eef[2] < obj[2] + 0.12:
                move = np.array([0.0, 0.0, 0.02])  # drift up, clear of the object, then wait
                speed = 0.3
        elif grasped and not self._release_steps:
            phase, move, speed, target_yaw, grip = self._holding(eef, obj, yaw)
        elif self.waypoints.placed(env):
            # Placed but the task is not solved yet: open the fingers, then lift away.
            self._placing = False
            if self._release_steps < RELEASE_STEPS or gap < FINGER_OPEN_M * 0.6:
                phase = "release"
                self._release_steps += 1
            else:
                phase = "retreat"
                move = np.array([0.0, 0.0, 0.1])
                speed = 0.5
        elif self._entangled(eef, obj, grasped):
            # Not grasped yet hanging off the hand (a finger went into the nut's hole, a can is
            # wedged between open fingers): following it would only lift it further. Lower it
            # onto the table with the fingers open; once it rests, the approach rises straight up
            # and the hand slides out.
            phase = "release"
            move = np.array([0.0, 0.0, self.waypoints.rest_z(env) - obj[2]])
            speed = 0.4
        else:
            self._release_steps = 0
            self._placing = False
            phase, move, speed, target_yaw, grip = self._reaching(eef, gp, yaw, gap)
        if phase != "grasp":
            self._grasp_steps = 0
        self._phase = phase
        return self._command(phase, move, speed, rot, target_yaw, grip)

    def _command(self, phase: str, move: np.ndarray, speed: float, rot: np.ndarray, target_yaw: float,
                 grip: float) -> np.ndarray:
        """The action that moves the eef by `move` (capped at `speed`), turns it to `target_yaw`
        from its rotation `rot` and sets the gripper, plus the expert's noise."""
        action = np.zeros(ACTION_DIM)
        cmd = self.pos_gain * move / POS_SCALE_M
        # Height is limited on its own: scaling it with a long xy move would let a carried object
        # sag (the OSC does not compensate its weight) into the bin walls or the peg.
        action[:2] = _limit(cmd[:2], speed)
        action[2] = np.clip(cmd[2], -speed, speed) if phase != "transport" else np.clip(cmd[2], -1.0, 1.0)
        err = mat_to_axis_angle(down_rotation(target_yaw) @ rot.T)
        action[3:6] = _limit(self.rot_gain * err / ROT_SCALE_RAD, 1.0)
        action[GRIPPER_INDEX] = grip
        if self.noise_std > 0:
            # Rotation noise is scaled down: one action unit turns 0.5 rad but moves only 5 cm,
            # and a wobbling wrist knocks objects far more than a wobbling position does.
            action[:6] += self._rng.normal(0.0, self.noise_std, 6) * NOISE_AXIS_SCALE
        return np.clip(action, -1.0, 1.0)

    def _reaching(
        self, eef: np.ndarray, gp: np.ndarray, yaw: float, gap: float
    ) -> tuple[str, np.ndarray, float, float, float]:
        """Not holding the object: approach above it, descend, close."""
        waypoints = self.waypoints
        target_yaw = grasp_yaw(self.env, yaw)
        grasp_pos = gp + np.array([0.0, 0.0, waypoints.grasp_dz])
        # Capped: an object that rides up with the hand must not lead it up out of the workspace.
        hover = grasp_pos + np.array([0.0, 0.0, HOVER_M])
        hover[2] = min(hover[2], waypoints.travel_z(self.env) + 0.05)
        xy_err = float(np.linalg.norm(grasp_pos[:2] - eef[:2]))
        yaw_err = abs(wrap_angle(target_yaw - yaw))
        z_err = eef[2] - grasp_pos[2]

        if self._grasp_steps:
            # Closing: keep the pose until the fingers have had time to close on the object.
            if self._grasp_steps < GRASP_TIMEOUT_STEPS and gap > FINGER_EMPTY_M:
                self._grasp_steps += 1
                return "grasp", grasp_pos - eef, 0.3, target_yaw, 1.0
            # Closed on nothing (or it slipped out): open and go round again from the hover pose.
            self._grasp_steps = 0
        if xy_err < 0.012 and yaw_err < 0.1 and z_err < 0.012 and gap > FINGER_OPEN_M * 0.85:
            self._grasp_steps = 1
            return "grasp", grasp_pos - eef, 0.3, target_yaw, 1.0
        # Descend only when lined up (hysteresis: enter under 1 cm, leave over 2.5 cm of error).
        lined_up = xy_err < (0.025 if self._phase in ("descend", "grasp") else 0.01) and yaw_err < 0.15
        if lined_up and gap > FINGER_OPEN_M * 0.85 and z_err < HOVER_M + 0.03:
            # A descent cone: the fingertips stay 4x the xy error above the grasp height, so an
            # xy error left over is corrected before the fingers reach the object, never by
            # pushing it (a nut knocked onto its edge can no longer go over the peg).
            goal = grasp_pos + np.array([0.0, 0.0, min(HOVER_M, max(0.0, 4.0 * (xy_err - 0.004)))])
            return "descend", goal - eef, 0.5, target_yaw, -1.0
        # Approach: travel at a safe height and come down to the hover pose over the object.
        travel_z = max(hover[2], waypoints.travel_z(self.env)) if xy_err > 0.05 else hover[2]
        goal = np.array([hover[0], hover[1], travel_z])
        if eef[2] < travel_z - 0.03 and xy_err > 0.03:
            # Low and far away: rise (nearly) straight up first, as a sideways sweep at object
            # height would push objects around or catch the hand on the peg or a bin wall.
            blend = 0.3 if eef[2] > travel_z - 0.06 else 0.0
            goal[:2] = eef[:2] + blend * (hover[:2] - eef[:2])
        return "approach", goal - eef, 1.0, target_yaw, -1.0

    def _entangled(self, eef: np.ndarray, obj: np.ndarray, grasped: bool) -> bool:
        if grasped or obj[2] < self.waypoints.rest_z(self.env) + 0.04:
            return False
        # Moving down means falling (just dropped) or already being lowered, not hanging.
        _, vadr = self.env._object_joint_adr[self.env.spec.manipulated]
        if float(self.env.sim.data.qvel[vadr + 2]) < -0.05:
            return False
        if float(np.linalg.norm(obj[:2] - eef[:2])) > 0.09 or abs(obj[2] - eef[2]) > 0.08:
            return False
        # Hanging means touching the hand; an object resting on a bin wall or the other cube is not.
        raw = self.env.raw
        gripper = raw.robots[0].gripper
        gripper = gripper["right"] if isinstance(gripper, dict) else gripper
        return bool(raw.check_contact(gripper, self.env.spec.grasp_geoms(raw)))

    def _holding(
        self, eef: np.ndarray, obj: np.ndarray, yaw: float
    ) -> tuple[str, np.ndarray, float, float, float]:
        """Holding the object: lift, carry over the target, lower, and hand over to release."""
        env = self.env
        waypoints = self.waypoints
        self._grasp_steps = 0
        target = waypoints.place_target(env)
        carry_z = target[2] + waypoints.carry_clearance
        target_yaw = waypoints.carry_yaw(env, yaw, target)
        xy_err = float(np.linalg.norm(target[:2] - obj[:2]))
        if waypoints.held_askew(env):
            return self._set_down(obj, target, target_yaw)
        if waypoints.holds_at_target:
            return "lift", target - obj, 0.6, target_yaw, 1.0

        if self._placing and xy_err > waypoints.place_xy_tol * 3 + 0.01:
            self._placing = False
        if not self._placing and xy_err < waypoints.place_xy_tol and obj[2] > carry_z - 0.03:
            self._placing = True
        if self._placing:
            release_z = target[2] + waypoints.release_dz
            if obj[2] < release_z + 0.006 and xy_err < waypoints.release_xy_tol:
                self._release_steps = 1
                return "release", np.zeros(3), 0.0, target_yaw, -1.0
            goal = np.array([target[0], target[1], release_z])
            return "place", goal - obj, 0.4, target_yaw, 1.0
        # Hysteresis: once carrying, only a real drop (not the weight's sag) sends it back to lift.
        lift_margin = 0.06 if self._phase == "transport" else 0.02
        if obj[2] < carry_z - lift_margin and xy_err > waypoints.place_xy_tol:
            # Straight up first so the object clears bin walls, the peg and the other cube.
            goal = np.array([obj[0], obj[1], carry_z])
            if obj[2] > carry_z - 0.08:
                goal[:2] = obj[:2] + 0.3 * (target[:2] - obj[:2])
            return "lift", goal - obj, 0.8, target_yaw, 1.0
        goal = np.array([target[0], target[1], carry_z])
        # Slow down close to the target so the object does not swing past it.
        return "transport", goal - obj, 0.8 if xy_err > 0.05 else 0.4, target_yaw, 1.0

    def _set_down(
        self, obj: np.ndarray, target: np.ndarray, target_yaw: float
    ) -> tuple[str, np.ndarray, float, float, float]:
        """An object held askew (a nut grasped off its handle or knocked on its edge never slides over
        the peg): put it down clear of the target and let go, so that it lies flat for a fresh grasp."""
        self._placing = False
        table_z = float(self.env.raw.table_offset[2])
        away = obj[:2] - target[:2]
        dist = float(np.linalg.norm(away))
        if dist < 0.12:
            # Over or next to the target (the peg): first carry it sideways, high enough to clear it.
            direction = away / dist if dist > 1e-6 else np.array([-1.0, 0.0])
            goal = np.array([*(target[:2] + 0.14 * direction), max(obj[2], target[2] + 0.17)])
            return "transport", goal - obj, 0.6, target_yaw, 1.0
        if obj[2] > table_z + 0.04:
            return "place", np.array([obj[0], obj[1], table_z + 0.03]) - obj, 0.5, target_yaw, 1.0
        return "release", np.zeros(3), 0.0, target_yaw, -1.0


def make_expert(env: GauntletEnv, seed: int = 0, noise_std: float = 0.0) -> ScriptedExpert:
    """The scripted expert for `env`'s task."""
    return ScriptedExpert(env, seed=seed, noise_std=noise_std)


def rollout_expert(
    env: GauntletEnv, seed: int, horizon: int, expert: ScriptedExpert | None = None, reset: bool = True
) -> ExpertResult:
    """Runs the expert for at most `horizon` steps, stopping at the first success.

    With `reset=True` the env is reset to `seed` and the expert (made with `seed` when not given)
    is reset too; with `reset=False` both carry on from their current state, which is how
    recovery from an injected error is tested.
    """
    if reset:
        env.reset(seed)
    if expert is None:
        expert = make_expert(env, seed=seed)
    elif reset:
        expert.reset()
    phases: list[str] = []
    success = env.success()
    steps = 0
    while not success and steps < horizon:
        success = env.step(expert.act())
        phases.append(expert.phase)
        steps += 1
    return ExpertResult(success=bool(success), steps=steps, phases=phases)
