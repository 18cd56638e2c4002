"""`gauntlet data import-hdf5`: a small file in robomimic's published layout, built with h5py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gauntlet.data.dataset_reader import open_dataset
from gauntlet.data.dataset_validation import validate
from gauntlet.data.import_hdf5 import task_of_env
from gauntlet.platform.cli import main as cli

LENGTHS = {"demo_0": 12, "demo_1": 7, "demo_2": 9, "demo_10": 5}  # demo_10 sorts after demo_2
STATE_SIZE = 32


def _robomimic_file(path: Path, images: bool = True, env_name: str = "Lift", masks: bool = True) -> dict:
    """Writes the layout robomimic/MimicGen publish; returns the arrays per demo."""
    rng = np.random.default_rng(0)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        env_args = {"env_name": env_name, "type": 1,
                    "env_kwargs": {"robots": ["Panda"], "control_freq": 20, "controller_configs": {"type": "OSC_POSE"}}}
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["total"] = sum(LENGTHS.values())
        for name, n in LENGTHS.items():
            g = data.create_group(name)
            g.attrs["num_samples"] = n
            xml = f"<mujoco model='{name}'><worldbody/></mujoco>"
            g.attrs["model_file"] = xml
            quat = Rotation.random(n, random_state=int(rng.integers(1 << 30))).as_quat()  # x y z w
            quat[: n // 2] *= -1  # both hemispheres, as a real trajectory can have
            d = {
                "actions": rng.uniform(-1, 1, (n, 7)),
                "states": rng.normal(size=(n, STATE_SIZE)),
                "robot0_eef_pos": rng.normal(size=(n, 3)),
                "robot0_eef_quat": quat,
                "robot0_gripper_qpos": rng.uniform(-0.04, 0.04, (n, 2)),
                "rewards": np.r_[np.zeros(n - 1), 1.0],
                "model_xml": xml,
            }
            g.create_dataset("actions", data=d["actions"])
            g.create_dataset("states", data=d["states"])
            g.create_dataset("rewards", data=d["rewards"])
            g.create_dataset("dones", data=d["rewards"].astype(np.int64))
            obs = g.create_group("obs")
            for key in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"):
                obs.create_dataset(key, data=d[key])
            obs.create_dataset("object", data=rng.normal(size=(n, 10)))
            if images:
                d["agentview_image"] = rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)
                d["robot0_eye_in_hand_image"] = rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)
                obs.create_dataset("agentview_image", data=d["agentview_image"])
                obs.create_dataset("robot0_eye_in_hand_image", data=d["robot0_eye_in_hand_image"])
            demos[name] = d
        if masks:
            m = f.create_group("mask")
            m.create_dataset("train", data=np.array([b"demo_0", b"demo_2", b"demo_10"]))
            m.create_dataset("valid", data=np.array([b"demo_1"]))
    return demos


def test_import_preserves_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "lift.hdf5"
    demos = _robomimic_file(src)
    out = tmp_path / "ds"
    assert cli(["data", "import-hdf5", str(src), "--out", str(out)]) == 0
    assert "next: gauntlet data stats" in capsys.readouterr().out
    ds = validate(out, expected_action_dim=7, expected_state_dim=8)
    order = ["demo_0", "demo_1", "demo_2", "demo_10"]
    assert ds.num_episodes == 4 and ds.num_frames == sum(LENGTHS.values())
    assert ds.episodes["length"].tolist() == [LENGTHS[d] for d in order]
    assert ds.episodes["source_episode"].tolist() == order
    assert ds.split("train").tolist() == [0, 2, 3] and ds.split("valid").tolist() == [1]
    assert ds.episodes["task"].tolist() == ["lift"] * 4 and ds.episodes["prompt"][0] == "pick up the red cube"
    assert ds.episodes["success"].all() and ds.episodes["seed"].isna().all()
    assert ds.info["source"]["kind"] == "hdf5" and ds.info["envs"]["lift/D0"]["env_name"] == "Lift"
    assert ds.info["envs"]["lift/D0"]["env_args"]["env_kwargs"]["controller_configs"] == {"type": "OSC_POSE"}
    assert ds.cameras == ["agentview", "wrist"]
    for ep, name in enumerate(order):
        d = demos[name]
        got = ds.episode(ep, sim=True)
        np.testing.assert_array_equal(got["action"], d["actions"].astype(np.float32))
        state = got["observation.state"]
        np.testing.assert_allclose(state[:, :3], d["robot0_eef_pos"], rtol=1e-6)
        # axis-angle against an independent conversion (scipy), both hemispheres of the quaternion
        np.testing.assert_allclose(state[:, 3:6], Rotation.from_quat(d["robot0_eef_quat"]).as_rotvec(), atol=1e-5)
        np.testing.assert_allclose(state[:, 6:8], d["robot0_gripper_qpos"], rtol=1e-6)
        np.testing.assert_array_equal(got["sim_states"], d["states"])  # float64, bit for bit
        assert got["model_xml"] == d["model_xml"]
        # robosuite's OpenGL images are upside down; imported images are upright like gauntlet's renders
        np.testing.assert_array_equal(got["observation.images.agentview"], d["agentview_image"][:, ::-1])
        np.testing.assert_array_equal(got["observation.images.wrist"], d["robot0_eye_in_hand_image"][:, ::-1])
    assert ds.episodes["fingerprint"].str.startswith("sha256:").all()
    assert ds.episodes["fingerprint"].nunique() == 4  # one model XML per demo


def test_import_options_without_masks_or_images(tmp_path: Path) -> None:
    src = tmp_path / "stack.hdf5"
    _robomimic_file(src, images=True, env_name="Stack_D1", masks=False)
    out = tmp_path / "ds"
    assert cli(["data", "import-hdf5", str(src), "--out", str(out), "--no-images", "--limit", "3",
                "--valid-fraction", "0.34"]) == 0
    ds = open_dataset(out)
    assert ds.cameras == [] and ds.num_episodes == 3
    assert ds.episodes["task"].tolist() == ["stack"] * 3 and ds.episodes["variant"].tolist() == ["D1"] * 3
    assert ds.split("train").tolist() == [0, 1] and ds.split("valid").tolist() == [2]
    assert task_of_env("PickPlaceCan") == ("pick_place_can", "")
    assert task_of_env("Coffee_D2") == ("coffee", "D2")
    resized = tmp_path / "small"
    assert cli(["data", "import-hdf5", str(src), "--out", str(resized), "--image-size", "6"]) == 0
    assert open_dataset(resized).episode(0)["observation.images.wrist"].shape == (12, 6, 6, 3)


def _break(path: Path, edit) -> None:
    with h5py.File(path, "a") as f:
        edit(f)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.move("data", "stuff"), "HDF5 group 'data' is missing"),
    (lambda f: f["data"].attrs.__setitem__("env_args", "{oops"), "'env_args'] is not valid JSON"),
    (lambda f: f.__delitem__("data/demo_1/actions"), "HDF5 path 'data/demo_1/actions' is missing"),
    (lambda f: (f.__delitem__("data/demo_2/actions"), f.create_dataset("data/demo_2/actions", data=np.zeros((9, 6)))),
     r"'data/demo_2/actions' has shape \(9, 6\), expected \(T, 7\)"),
    (lambda f: (f.__delitem__("data/demo_0/obs/robot0_eef_pos"),
                f.create_dataset("data/demo_0/obs/robot0_eef_pos", data=np.zeros((11, 3)))),
     r"'data/demo_0/obs/robot0_eef_pos' has shape \(11, 3\), expected \(12, 3\) \(inconsistent lengths\)"),
    (lambda f: (f.__delitem__("data/demo_1/states"), f.create_dataset("data/demo_1/states", data=np.zeros((6, 4)))),
     r"'data/demo_1/states' has shape \(6, 4\), expected \(7, S\) \(inconsistent lengths\)"),
    (lambda f: f["data/demo_0"].attrs.__setitem__("num_samples", 99), r"num_samples'\] is 99"),
    (lambda f: f["data/demo_1"].attrs.__delitem__("model_file"), r"'data/demo_1'.attrs\['model_file'\]"),
])
def test_malformed_files_are_rejected_naming_file_and_path(tmp_path: Path, capsys, edit, message) -> None:
    src = tmp_path / "bad.hdf5"
    _robomimic_file(src, images=False)
    _break(src, edit)
    out = tmp_path / "ds"
    assert cli(["data", "import-hdf5", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(src) in err
    assert re.search(message, err), err
    assert not out.exists()  # nothing half-written at the destination
    assert [p.name for p in tmp_path.iterdir()] == ["bad.hdf5"]


def test_not_an_hdf5_file(tmp_path: Path, capsys) -> None:
    src = tmp_path / "x.hdf5"
    src.write_text("hello")
    assert cli(["data", "import-hdf5", str(src), "--out", str(tmp_path / "ds")]) == 1
    assert "not a readable HDF5 file" in capsys.readouterr().err
