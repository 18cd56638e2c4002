"""LeRobot pretrained directories read and refused in Gauntlet's own process (LeRobot absent here)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gauntlet.deployments.app import specs_from_names
from gauntlet.policies.lerobot.config import (
    CONFIG_FILE,
    POSTPROCESSOR_FILE,
    PREPROCESSOR_FILE,
    WEIGHTS_FILE,
    LeRobotAdapterConfig,
    LeRobotDirError,
    read_pretrained,
)
from gauntlet.policies.lerobot.environment import PROTOBUF_COMPAT
from gauntlet.policies.lerobot.release_check import unknown_fields
from gauntlet.policies.registry import PolicyRef, runtime_env_for, split_adapter
from gauntlet.policies.validation import ObservationError, episode_ids


def _config(**changes) -> dict:
    """A config.json as ACTPolicy.save_pretrained writes it (the fields Gauntlet reads)."""
    cfg = {
        "type": "act", "n_obs_steps": 1, "chunk_size": 10, "n_action_steps": 5,
        "input_features": {
            "observation.state": {"type": "STATE", "shape": [8]},
            "observation.images.agentview": {"type": "VISUAL", "shape": [3, 32, 48]},
            "observation.images.wrist": {"type": "VISUAL", "shape": [3, 32, 48]},
        },
        "output_features": {"action": {"type": "ACTION", "shape": [7]}},
    }
    cfg.update(changes)
    return cfg


def _pretrained(root: Path, cfg: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_FILE).write_text(json.dumps(cfg))
    for name in (WEIGHTS_FILE, PREPROCESSOR_FILE, POSTPROCESSOR_FILE):
        (root / name).write_text("{}")
    return root


def test_lerobot_is_not_importable_in_gauntlets_env() -> None:
    # The premise of the isolation: this process must never need LeRobot (or its torch pin).
    assert importlib.util.find_spec("lerobot") is None


def test_metadata_is_derived_from_the_saved_config(tmp_path: Path) -> None:
    spec = read_pretrained(_pretrained(tmp_path / "act", _config()))
    meta = spec.metadata(LeRobotAdapterConfig())
    assert (meta.action_dim, meta.chunk_len, meta.needs_images) == (7, 5, True)
    assert {k: (v.shape, v.dtype) for k, v in meta.observation_spec.items()} == {
        "observation/state": ((8,), "float32"),
        "observation/image": ((32, 48, 3), "uint8"),
        "observation/wrist_image": ((32, 48, 3), "uint8"),
    }
    language = read_pretrained(_pretrained(tmp_path / "pi0", _config(type="pi0", n_action_steps=50)))
    assert "prompt" in language.metadata(LeRobotAdapterConfig()).observation_spec


@pytest.mark.parametrize(("cfg", "stateful"), [
    (_config(), False),
    (_config(temporal_ensemble_coeff=0.01, n_action_steps=1), True),  # ACT's temporal ensemble
    (_config(type="diffusion", n_obs_steps=2, n_action_steps=4), True),  # an observation history
    (_config(type="diffusion", n_obs_steps=1, n_action_steps=4), False),
    (_config(type="pi0", n_action_steps=50), False),  # its select_action keeps only the action queue
])
def test_policies_with_select_action_state_keep_it_per_episode(tmp_path: Path, cfg: dict, stateful: bool) -> None:
    # A stateful policy takes one request per env step (its history takes every observation) and
    # keeps the episode on its replica; the others answer n_action_steps actions per request.
    meta = read_pretrained(_pretrained(tmp_path / "p", cfg)).metadata(LeRobotAdapterConfig(max_episodes=7))
    assert (meta.chunk_len, meta.episode_memory) == ((1, True) if stateful else (cfg["n_action_steps"], False))
    assert meta.extra.get("max_episodes") == (7 if stateful else None)
    with pytest.raises(ValueError, match="max_episodes"):
        LeRobotAdapterConfig(max_episodes=0)


def test_a_stateful_batch_names_each_row_episode_once() -> None:
    # episode_state.py reads the ids before any state moves; rows without one are not kept.
    assert episode_ids({"episode_id": np.array(["a", "", "b"])}, 3) == ["a", "", "b"]
    assert episode_ids({}, 2) == ["", ""]
    with pytest.raises(ObservationError, match="'a' appears more than once") as err:
        episode_ids({"episode_id": np.array(["a", "b", "a"])}, 3)
    assert err.value.field == "episode_id"
    with pytest.raises(ObservationError, match="expected 3 ids"):
        episode_ids({"episode_id": np.array(["a", "b"])}, 3)


def test_camera_names_are_configurable(tmp_path: Path) -> None:
    cfg = _config()
    cfg["input_features"] = {"observation.state": {"type": "STATE", "shape": [8]},
                             "observation.images.front": {"type": "VISUAL", "shape": [3, 16, 16]}}
    root = _pretrained(tmp_path / "d", cfg)
    with pytest.raises(LeRobotDirError, match=r"config.json: input_features.observation.images.front: camera 'front'"):
        read_pretrained(root)
    meta = read_pretrained(root, LeRobotAdapterConfig(cameras={"front": "observation/image"})).metadata(
        LeRobotAdapterConfig(cameras={"front": "observation/image"}))
    assert set(meta.observation_spec) == {"observation/state", "observation/image"}


@pytest.mark.parametrize(("change", "message"), [
    ({"type": "tdmpc"}, r"config.json: type: 'tdmpc' is not supported"),
    ({"input_features": {"observation.state": {"type": "STATE", "shape": [14]}}},
     r"config.json: input_features.observation.state.shape: \[14\] does not match the environment's state \(8,\)"),
    ({"output_features": {"action": {"type": "ACTION", "shape": [14]}}},
     r"config.json: output_features.action.shape: \[14\] does not match the environment's action \(7,\)"),
    ({"input_features": {"observation.images.agentview": {"type": "VISUAL", "shape": [3, 8, 8]}}},
     r"config.json: input_features.observation.state: missing"),
    ({"input_features": {"observation.state": {"type": "STATE", "shape": [8]},
                         "observation.environment_state": {"type": "ENV", "shape": [10]}}},
     r"config.json: input_features.observation.environment_state: Gauntlet's environment provides no such"),
    ({"n_action_steps": 0}, r"config.json: n_action_steps"),
])
def test_misfit_policies_are_refused_naming_file_and_field(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(LeRobotDirError, match=message):
        read_pretrained(_pretrained(tmp_path / "d", _config(**change)))


def test_a_directory_that_is_not_a_pretrained_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LeRobotDirError, match="does not exist"):
        read_pretrained(tmp_path / "nope")
    root = _pretrained(tmp_path / "d", _config())
    (root / PREPROCESSOR_FILE).unlink()
    with pytest.raises(LeRobotDirError, match=r"policy_preprocessor.json: <file>: missing"):
        read_pretrained(root)
    (root / PREPROCESSOR_FILE).write_text("{}")
    (root / CONFIG_FILE).write_text("{not json")
    with pytest.raises(LeRobotDirError, match=r"config.json: <json>: unreadable"):
        read_pretrained(root)


def test_serving_specs_refuse_before_deploying_and_carry_the_runtime_env(tmp_path: Path, monkeypatch) -> None:
    # What `gauntlet serve --policy lerobot=DIR` and `gauntlet eval --policy lerobot=DIR` both go through.
    with pytest.raises(ValueError, match="output_features.action.shape"):
        specs_from_names([f"lerobot={_pretrained(tmp_path / 'bad', _config(output_features={'action': {'shape': [6]}}))}"])
    with pytest.raises(ValueError, match="name a pretrained directory"):
        specs_from_names(["lerobot"])
    _pretrained(tmp_path / "ok", _config())
    monkeypatch.chdir(tmp_path)
    spec = specs_from_names(["lerobot=ok"])[0]
    assert spec.ref == PolicyRef("lerobot", str((tmp_path / "ok").resolve()))  # replicas run in another cwd
    assert spec.actor_options()["runtime_env"] == runtime_env_for("lerobot")
    assert spec.runtime_env["uv"]["packages"] == ["lerobot[dataset,diffusion,pi,smolvla]==0.6.1"]
    # `lerobot@RELEASE=DIR` pins another release; 0.4.x has no extras and needs the protobuf 6 pins.
    pinned = specs_from_names(["lerobot@0.4.4=ok"])[0]
    assert pinned.ref == PolicyRef("lerobot", str((tmp_path / "ok").resolve()), release="0.4.4")
    assert pinned.runtime_env == runtime_env_for("lerobot", "0.4.4")
    assert pinned.runtime_env["uv"]["packages"] == ["lerobot==0.4.4", *PROTOBUF_COMPAT]
    assert specs_from_names(["random"])[0].actor_options() == {"num_cpus": 1.0, "num_gpus": 0.0}


def test_a_release_pin_is_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    _pretrained(tmp_path / "ok", _config())
    with pytest.raises(ValueError, match="random policy runs in Gauntlet's own environment.*lerobot"):
        PolicyRef.parse("random@1.0")
    with pytest.raises(ValueError, match="'latest' is not a release"):
        specs_from_names([f"lerobot@latest={tmp_path / 'ok'}"])
    assert PolicyRef.parse("lerobot@0.4.4") == PolicyRef("lerobot", None, "0.4.4")


@pytest.mark.parametrize(("text", "split"), [
    ("vla=base/dir@adapters/d1", ("vla=base/dir", "adapters/d1")),
    ("vla@adapters/d1", ("vla", "adapters/d1")),  # vla serves adapters: the `@` names one
    ("lerobot@0.4.4=ckpt", ("lerobot@0.4.4=ckpt", "")),  # before `=`: the release
    ("lerobot@0.4.4", ("lerobot@0.4.4", "")),  # lerobot serves no adapters: a release
    ("lerobot=ckpt", ("lerobot=ckpt", "")),
])
def test_adapters_and_releases_are_told_apart(text: str, split: tuple[str, str]) -> None:
    assert split_adapter(text) == split


@dataclasses.dataclass
class _Inner:
    lr: float = 1e-4


@dataclasses.dataclass
class _Outer:
    chunk_size: int = 10
    optimizer: _Inner = dataclasses.field(default_factory=_Inner)
    features: dict = dataclasses.field(default_factory=dict)


def test_unknown_config_fields_are_named_with_their_path() -> None:
    # The walk the release check runs over LeRobot's config class, on plain dataclasses.
    assert unknown_fields(_Outer, {"chunk_size": 5, "optimizer": {"lr": 1.0}, "features": {"x": 1}}) == []
    assert unknown_fields(_Outer, {"pretrained_revision": None, "optimizer": {"lr": 1.0, "betas": [0.9]}}) == [
        "pretrained_revision", "optimizer.betas"]
