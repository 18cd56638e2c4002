"""Tasks, determinism, observations, lazy rendering, exact restore and fingerprints on real envs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from gauntlet.envs.env import EnvConfig, GauntletEnv, make_env
from gauntlet.envs.fingerprint import canonical_xml, fingerprint_of
from gauntlet.envs.rotations import quat_xyzw_to_axis_angle
from gauntlet.envs.tasks import TASKS
from gauntlet.runtime.registry import UnknownNameError


@pytest.fixture(scope="module")
def lift() -> GauntletEnv:
    return make_env("lift", "D0", image_size=32)


def _rollout(env: GauntletEnv, seed: int, actions: np.ndarray) -> np.ndarray:
    env.reset(seed)
    out = []
    for a in actions:
        env.step(a)
        out.append(np.concatenate([env.sim.data.qpos, env.sim.data.qvel]))
    return np.array(out)


def test_same_seed_gives_same_trajectory_bit_for_bit(lift: GauntletEnv) -> None:
    actions = np.random.default_rng(1).uniform(-1, 1, size=(25, 7))
    a = _rollout(lift, 7, actions)
    b = _rollout(lift, 7, actions)
    fresh = make_env("lift", "D0", image_size=32)
    c = _rollout(fresh, 7, actions)
    assert np.array_equal(a, b)
    assert np.array_equal(a, c)
    d = _rollout(lift, 8, actions)
    assert not np.array_equal(a, d)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_builds_both_variants_and_observes(task: str) -> None:
    for variant in ("D0", "D1"):
        env = make_env(task, variant, image_size=24)
        env.reset(3)
        obs = env.observe(images=True)
        assert obs["observation/state"].shape == (8,) and obs["observation/state"].dtype == np.float32
        assert obs["observation/object_state"].shape == (TASKS[task].object_state_dim,)
        assert obs["observation/image"].shape == (24, 24, 3) and obs["observation/image"].dtype == np.uint8
        assert obs["observation/wrist_image"].shape == (24, 24, 3)
        assert obs["observation/image"].std() > 0  # a real picture, not a blank buffer
        assert obs["prompt"] == TASKS[task].instruction
        assert not env.success()
        env.close()


def test_d1_spreads_objects_wider_than_d0() -> None:
    spreads = {}
    for variant in ("D0", "D1"):
        env = make_env("lift", variant, image_size=16)
        xy = []
        for seed in range(12):
            env.reset(seed)
            xy.append(env.object_pose("cube_main")[0][:2])
        spreads[variant] = np.ptp(np.array(xy), axis=0).max()
        if variant == "D0":
            assert np.abs(np.array(xy)).max() <= 0.03 + 1e-6
    assert spreads["D1"] > 2 * spreads["D0"]


def test_state_vector_layout_and_quaternion_input_untouched(lift: GauntletEnv) -> None:
    lift.reset(0)
    state = lift.proprio_state()
    assert np.allclose(state[:3], lift.eef_pos)
    assert np.allclose(state[6:], lift.gripper_qpos)
    quat = np.array([0.0, 0.0, 0.0, 1.0000001])  # w slightly above 1: robosuite clips this in place
    before = quat.copy()
    aa = quat_xyzw_to_axis_angle(quat)
    assert np.array_equal(quat, before)
    assert np.allclose(aa, 0.0)
    half = np.array([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)])  # 90 degrees about z
    assert np.allclose(quat_xyzw_to_axis_angle(half), [0, 0, np.pi / 2])


def test_rendering_is_lazy(lift: GauntletEnv) -> None:
    lift.reset(0)
    start = lift.counters.renders
    for _ in range(16):
        lift.step(np.zeros(7))
    assert lift.counters.renders == start  # stepping never renders
    lift.observe(images=False)
    assert lift.counters.renders == start
    lift.observe(images=True)
    assert lift.counters.renders == start + 2  # one image per camera, only when asked


@pytest.mark.parametrize("task", ["lift", "stack", "square", "pick_place_can"])
def test_restored_state_continues_exactly_step_by_step(task: str) -> None:
    rng = np.random.default_rng(4)
    actions = rng.uniform(-1, 1, size=(40, 7))
    env = make_env(task, "D1", image_size=16)
    env.reset(11)
    for a in actions[:15]:
        env.step(a)
    env.disturbances.gripper_stall_steps = 5  # env-level disturbance state is part of the state
    env.disturbances.gripper_stall_command = -1.0
    saved = env.get_state()
    original = []
    for a in actions[15:]:
        env.step(a)
        original.append((env.sim.data.qpos.copy(), env.sim.data.qvel.copy(), env.proprio_state()))
    other = make_env(task, "D1", image_size=16)
    other.reset(999)  # somewhere else entirely
    other.set_state(saved)
    for step, a in enumerate(actions[15:]):
        other.step(a)
        qpos, qvel, prop = original[step]
        assert np.array_equal(other.sim.data.qpos, qpos), f"qpos diverged at step {step}"
        assert np.array_equal(other.sim.data.qvel, qvel), f"qvel diverged at step {step}"
        assert np.array_equal(other.proprio_state(), prop)


def test_restore_without_controller_state_would_diverge() -> None:
    """Guards the test above: physics state alone is not enough to continue exactly."""
    import mujoco

    rng = np.random.default_rng(5)
    actions = rng.uniform(-1, 1, size=(30, 7))
    env = make_env("lift", "D0", image_size=16)
    env.reset(2)
    for a in actions[:15]:
        env.step(a)
    m, d = env.sim.model._model, env.sim.data._data
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    physics = np.empty(mujoco.mj_stateSize(m, spec))
    mujoco.mj_getState(m, d, physics, spec)
    for a in actions[15:]:
        env.step(a)
    final = env.sim.data.qpos.copy()
    other = make_env("lift", "D0", image_size=16)
    other.reset(3)
    mujoco.mj_setState(other.sim.model._model, other.sim.data._data, physics, spec)
    mujoco.mj_forward(other.sim.model._model, other.sim.data._data)
    for a in actions[15:]:
        other.step(a)
    assert not np.array_equal(other.sim.data.qpos, final)


def test_fingerprint_same_config_same_hash_and_settings_matter() -> None:
    a = make_env("stack", "D0", image_size=16)
    b = make_env("stack", "D1", image_size=16)  # variant only moves initial placements
    assert a.fingerprint == b.fingerprint
    c = GauntletEnv(EnvConfig(task="stack", image_size=16, control_freq=10))
    assert c.fingerprint != a.fingerprint
    d = make_env("lift", "D0", image_size=16)
    assert d.fingerprint != a.fingerprint


def test_fingerprint_ignores_install_paths_but_not_physics() -> None:
    xml_a = '<mujoco><asset><mesh file="/home/a/site-packages/robosuite/m.stl" name="m"/></asset>' \
            '<worldbody><geom friction="1 0.005 0.0001" type="box" size="1 1 1"/></worldbody></mujoco>'
    xml_b = xml_a.replace("/home/a/site-packages", "/opt/other/venv/lib")
    xml_c = xml_a.replace('friction="1 0.005', 'friction="0.5 0.005')
    assert canonical_xml(xml_a) == canonical_xml(xml_b)
    assert fingerprint_of(xml_a, {"x": 1}) == fingerprint_of(xml_b, {"x": 1})
    assert fingerprint_of(xml_a, {"x": 1}) != fingerprint_of(xml_c, {"x": 1})
    assert fingerprint_of(xml_a, {"x": 1}) != fingerprint_of(xml_a, {"x": 2})


def test_unknown_task_variant_and_bad_actions_are_rejected(lift: GauntletEnv) -> None:
    with pytest.raises(UnknownNameError, match="unknown task 'juggle'"):
        make_env("juggle")
    with pytest.raises(UnknownNameError, match="unknown variant 'D7'"):
        make_env("lift", "D7")
    with pytest.raises(ValueError, match="7 values"):
        lift.step(np.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        lift.step(np.full(7, np.nan))


def test_egl_device_follows_cuda_visible_devices() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_EGL_DEVICE_ID", "MUJOCO_GL")}
    env["CUDA_VISIBLE_DEVICES"] = "3,5"
    code = "import os; from gauntlet.envs.rendering import configure_gl; configure_gl(); " \
           "print(os.environ['MUJOCO_GL'], os.environ['MUJOCO_EGL_DEVICE_ID'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["egl", "3"]


def test_an_actor_renders_on_the_gpu_ray_gave_it() -> None:
    """`--actor-gpus`: the EGL device is the actor's first Ray-assigned GPU; none assigned: unchanged."""
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_EGL_DEVICE_ID", "MUJOCO_GL")}
    code = ("import os; from gauntlet.envs.rendering import egl_device_id, render_on_gpus; "
            "render_on_gpus([]); before = egl_device_id(); render_on_gpus(['6', '7']); "
            "print(before, egl_device_id())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["-1", "6"]
