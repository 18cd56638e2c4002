"""Declared policy families: a family registered in one place (tests/policies/toy_family.py, named by
GAUNTLET_POLICY_PLUGINS) is listed by `--help`, served and evaluated with nothing else edited; the
registry refuses unknown and duplicate names; the ability protocols recognise the built-in policies."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pandas as pd
import pytest

from gauntlet.keys import ACTION_DIM, ACTIONS_KEY, PROMPT_KEY, STATE_DIM, STATE_KEY
from gauntlet.policies.registry import (
    ABILITIES,
    PLUGINS_ENV,
    PolicyFamily,
    PolicyRef,
    families,
    families_help,
    make_policy,
    policy_family,
    register_family,
)
from gauntlet.runtime.registry import UnknownNameError

REPO = Path(__file__).resolve().parents[2]
GAUNTLET = REPO / ".venv" / "bin" / "gauntlet"
PLUGIN = "tests.policies.toy_family"
BUILT_IN = ("random", "scripted", "bc_rnn", "vla", "lerobot")


@pytest.fixture(scope="module")
def toy() -> ModuleType:
    """The plugin named in this process's environment, as a user sets it; the registry imports it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))  # the repository root, so that `tests.policies...` imports
        patch.setenv(PLUGINS_ENV, PLUGIN)
        policy_family("toy")  # imported by the registry on the first lookup that needs it
        yield importlib.import_module(PLUGIN)  # the same module object the registry imported


def _plugin_env() -> dict[str, str]:
    return {**os.environ, PLUGINS_ENV: PLUGIN, "PYTHONPATH": str(REPO)}


def _toy_answer(toy: ModuleType, state: np.ndarray) -> np.ndarray:
    return np.repeat((-toy.GAIN * state[:ACTION_DIM])[None], toy.CHUNK_LEN, axis=0)


@pytest.mark.parametrize("command", ["serve", "eval"])
def test_help_lists_a_plugin_family(command: str) -> None:
    out = subprocess.run([str(GAUNTLET), command, "--help"], capture_output=True, text=True, timeout=120,
                         env=_plugin_env(), check=True).stdout
    text = " ".join(out.split())  # argparse wraps lines
    for name in BUILT_IN:
        assert f"{name} (" in text
    assert "toy (toy linear policy from a plugin)" in text
    if command == "eval":
        assert "except random, scripted, toy_local, which run in-process" in text
    bare = subprocess.run([str(GAUNTLET), command, "--help"], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != PLUGINS_ENV}, check=True).stdout
    assert "toy" not in bare


def test_a_plugin_family_is_served_over_http(ray_session, toy: ModuleType, free_ports) -> None:
    from ray import serve

    from gauntlet.deployments.app import specs_from_names, start_serve

    (http_port,) = free_ports(1)
    serve.shutdown()  # a Serve an earlier module left keeps its own ports
    try:
        start_serve(specs_from_names(["toy"], max_batch_size=4), http_port=http_port, grpc_port=None)
        state = np.linspace(-1, 1, STATE_DIM).astype(np.float32)
        r = httpx.post(f"http://127.0.0.1:{http_port}/v1/policies/toy/infer",
                       json={STATE_KEY: state.tolist(), PROMPT_KEY: "lift"}, timeout=60)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()[ACTIONS_KEY]), _toy_answer(toy, state), rtol=1e-6)
        assert httpx.get(f"http://127.0.0.1:{http_port}/healthz").json()["policies"] == ["toy"]
    finally:
        serve.shutdown()


def test_plugin_families_are_evaluated_deployed_and_in_the_actors(ray_session, toy: ModuleType,
                                                                   tmp_path: Path) -> None:
    from gauntlet.platform.cli import main as cli
    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.driver import run_eval
    from gauntlet.platform.eval.targets import policy_targets
    from gauntlet.runtime.config_args import parse_config

    db = tmp_path / "scenes"
    assert cli(["scenes", "generate", "--out", str(db), "--tasks", "lift", "--variants", "D0",
                "--error-types", "object_push", "--workers", "1", "--no-validate"]) == 0
    cfg = parse_config(EvalConfig, ["--scenes", str(db), "--policy", "toy", "--policy", "toy_local",
                                    "--out", str(tmp_path / "run"), "--actors", "1", "--horizon", "8"], "eval", "")
    targets, deploy = policy_targets(cfg)
    assert [(t.label, t.kind) for t in targets] == [("toy", "serve"), ("toy_local", "local")]
    assert [s.ref.name for s in deploy] == ["toy"]
    summary = run_eval(cfg)
    frame = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert sorted(frame["policy"]) == ["toy", "toy_local"]
    assert not frame["skipped"].any(), frame["skip_reason"].tolist()
    assert (frame["inference_calls"] == 2).all()  # 8 steps, chunks of 4
    assert summary["serving"]["toy"]["requests"]["ok"] == 2


def test_unknown_family_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="unknown policy 'gpt'; known: random, scripted, bc_rnn, vla, lerobot"):
        PolicyRef.parse("gpt=ckpt")
    with pytest.raises(UnknownNameError):
        make_policy("gpt")


def test_a_second_family_under_one_name_and_bad_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="policy 'random' is registered twice"):
        register_family(PolicyFamily(name="random", summary="again", factory="x:y"))
    for name in ("deploy", "remote", "a=b", "vla@x", ""):
        with pytest.raises(ValueError, match="name:"):
            PolicyFamily(name=name, summary="s", factory="x:y")
    with pytest.raises(ValueError, match="abilities: unknown"):
        PolicyFamily(name="fresh", summary="s", factory="x:y", abilities=frozenset({"fly"}))
    assert "fresh" not in families()


def test_a_plugin_that_cannot_be_imported_is_named_and_spares_the_built_ins(monkeypatch) -> None:
    monkeypatch.setenv(PLUGINS_ENV, "no_such_module_anywhere")
    assert PolicyRef.parse("random").name == "random"  # a built-in needs no plugin
    with pytest.raises(ValueError, match=f"{PLUGINS_ENV}: policy plugin module 'no_such_module_anywhere'"):
        PolicyRef.parse("elsewhere")
    text = families_help()
    assert text.startswith("random (") and "no_such_module_anywhere" in text


def test_listing_families_imports_no_framework() -> None:
    code = ("import sys; from gauntlet.policies.registry import families, families_help; families_help(); "
            "print(sorted(m for m in ('torch', 'jax', 'lerobot', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_the_generic_registry_imports_no_family_code() -> None:
    """The VLA's preset default belongs to the VLA family's hook, not to the registry every family imports."""
    from gauntlet.policies.registry import PolicyRef, ServingOptions, serving_kwargs
    from gauntlet.policies.vla.config import DEFAULT_PRESET

    code = ("import sys; import gauntlet.policies.registry; "
            "print(sorted(m for m in sys.modules if m.startswith('gauntlet.policies.vla')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
    assert serving_kwargs(PolicyRef("vla"), ServingOptions()) == {"config_name": DEFAULT_PRESET}
    assert serving_kwargs(PolicyRef("vla"), ServingOptions(preset="small")) == {"config_name": "small"}


@pytest.mark.parametrize("name, kwargs", [("random", {}), ("scripted", {}), ("bc_rnn", {"hidden_size": 32}),
                                          ("vla", {"config_name": "tiny", "depth": 1, "expert_depth": 1})])
def test_declared_abilities_match_what_the_policies_are(name: str, kwargs: dict) -> None:
    policy = make_policy(name, **kwargs)
    family = policy_family(name)
    assert {a for a, protocol in ABILITIES.items() if isinstance(policy, protocol)} == family.abilities
    if name == "vla":
        assert family.abilities == {"warmup", "adapters", "compile_count"} and family.serves_adapters
        assert policy.compile_count == 0
