"""The fast stepping path (`gauntlet.envs.fast_control`) against robosuite's own `step`, bit for bit.

Every task and variant, random and expert actions, from a reset and from a restored state, and after
injected errors: the same MuJoCo state, controller state, observations and captured state, compared
with `tobytes` (equal bits, not just equal values: -0.0 != 0.0 here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from gauntlet.envs.env import GauntletEnv, make_env
from gauntlet.envs.experts import make_expert
from gauntlet.envs.injectors import SPECS, apply_injection, hold_action
from gauntlet.envs.tasks import TASKS, VARIANTS

EnvFactory = Callable[[str, str, bool], GauntletEnv]


@pytest.fixture(scope="module")
def envs() -> Iterator[EnvFactory]:
    """Envs built once per (task, variant, fast_control) for the whole module (a build takes ~1 s)."""
    built: dict[tuple[str, str, bool], GauntletEnv] = {}

    def get(task: str, variant: str, fast: bool) -> GauntletEnv:
        key = (task, variant, fast)
        if key not in built:
            built[key] = make_env(task, variant, image_size=16, fast_control=fast)
        return built[key]

    yield get
    for env in built.values():
        env.close()


def _assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert x.tobytes() == y.tobytes(), f"{key} differs: max |diff| {np.max(np.abs(x - y)) if x.dtype.kind == 'f' else '-'}"


def _snapshot(env: GauntletEnv) -> dict[str, np.ndarray]:
    """What one step must leave identical: MuJoCo's state, the controllers' state (in get_state)
    and the observation."""
    d = env.sim.data
    obs = env.observe(images=False)
    return {"qpos": np.array(d.qpos), "qvel": np.array(d.qvel), "act": np.array(d.act), "ctrl": np.array(d.ctrl),
            "time": np.array(d.time), **{f"obs/{k}": v for k, v in obs.items() if isinstance(v, np.ndarray)},
            **env.get_state()}


def _run(env: GauntletEnv, actions: np.ndarray) -> list[dict[str, np.ndarray]]:
    trace = []
    for a in actions:
        env.step(a)
        trace.append(_snapshot(env))
    return trace


def _run_expert(env: GauntletEnv, seed: int, steps: int) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    expert = make_expert(env, seed=seed)
    actions, trace = [], []
    for _ in range(steps):
        actions.append(expert.act())
        env.step(actions[-1])
        trace.append(_snapshot(env))
    return np.array(actions), trace


def _assert_same_trace(fast: list[dict[str, np.ndarray]], raw: list[dict[str, np.ndarray]]) -> None:
    assert len(fast) == len(raw)
    for step, (f, r) in enumerate(zip(fast, raw, strict=True)):
        try:
            _assert_same_state(f, r)
        except AssertionError as e:
            raise AssertionError(f"step {step}: {e}") from None


def test_fast_path_is_taken_and_stays_out_of_the_fingerprint(envs: EnvFactory) -> None:
    for task in sorted(TASKS):
        fast = envs(task, "D0", True)
        # A configuration the fast path does not reproduce would silently fall back to raw.step.
        assert fast._stepper is not None and fast._stepper.reason is None, fast._stepper.reason
        assert fast._stepper._current_layout().use_kernel
    raw = envs("lift", "D0", False)
    assert raw._stepper is None
    assert envs("lift", "D0", True).fingerprint == raw.fingerprint
    assert "fast_control" not in raw.config.dynamics_settings()


@pytest.mark.parametrize(("task", "variant"), [(t, v) for t in sorted(TASKS) for v in VARIANTS])
def test_fast_steps_equal_robosuite_steps_bit_for_bit(envs: EnvFactory, task: str, variant: str) -> None:
    fast, raw = envs(task, variant, True), envs(task, variant, False)
    seed = 11 + VARIANTS.index(variant)
    # Random actions (some beyond [-1, 1]: the env clips them) from a reset: the first step starts
    # from the controller state the reset left (robosuite skips its update there).
    actions = np.random.default_rng(seed).uniform(-1.3, 1.3, size=(12, 7))
    for env in (fast, raw):
        env.reset(seed)
    _assert_same_trace(_run(fast, actions), _run(raw, actions))

    # The scripted expert from a reset, through grasping (contacts, gripper closing, a held object).
    traces = {}
    for name, env in (("fast", fast), ("raw", raw)):
        env.reset(seed)
        traces[name] = _run_expert(env, seed, 45)
    assert np.array_equal(traces["fast"][0], traces["raw"][0])
    _assert_same_trace(traces["fast"][1], traces["raw"][1])

    # A state captured after fast steps restores and continues identically on both paths.
    captured = fast.get_state()
    for env in (fast, raw):
        env.set_state(captured)
    more = np.random.default_rng(seed + 100).uniform(-1.0, 1.0, size=(8, 7))
    _assert_same_trace(_run(fast, more), _run(raw, more))


@pytest.mark.parametrize("task", ["lift", "stack"])
def test_fast_steps_after_injected_errors_equal_robosuite_steps(envs: EnvFactory, task: str) -> None:
    """Injectors move joints and objects between steps: the fast path reads all of it afresh."""
    fast, raw = envs(task, "D0", True), envs(task, "D0", False)
    fast.reset(5)
    _run_expert(fast, 5, 30)
    start = fast.get_state()
    for error_type, spec in SPECS.items():
        if not spec.applies_to(task):
            continue
        traces = []
        for env in (fast, raw):
            env.set_state(start)
            params = apply_injection(env, error_type, np.random.default_rng(3))
            traces.append(_run(env, np.array([hold_action(env)] * 6)))
        assert params, error_type
        try:
            _assert_same_trace(*traces)
        except AssertionError as e:
            raise AssertionError(f"{error_type}: {e}") from None
