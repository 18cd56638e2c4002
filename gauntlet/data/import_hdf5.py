"""`gauntlet data import-hdf5 FILE --out DS`: robomimic / MimicGen HDF5 demonstrations -> a dataset.

The layout read is robomimic's, as published (MimicGen uses the same):

    data                         attribute env_args: JSON {"env_name", "type", "env_kwargs"}
    data/demo_<i>                attributes num_samples, model_file (MuJoCo XML)
    data/demo_<i>/actions        (T, 7)
    data/demo_<i>/states         (T, S) flattened MuJoCo state
    data/demo_<i>/obs/robot0_eef_pos (T, 3), robot0_eef_quat (T, 4, x y z w), robot0_gripper_qpos (T, 2)
    data/demo_<i>/obs/<camera>_image (T, H, W, 3) uint8, optional
    data/demo_<i>/rewards, dones optional
    mask/train, mask/valid       optional arrays of demo names (bytes) -> splits

Demos are streamed one at a time (a file can be tens of GB of images). The 8-d state is built the
way the env builds `observation/state`: eef position, eef axis-angle (from the xyzw quaternion with
gauntlet.envs.rotations), gripper finger positions.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.data.commands import run_dataset_command
from gauntlet.data.dataset_schema import DatasetError
from gauntlet.data.dataset_writer import DatasetWriter
from gauntlet.data.images import resize_image
from gauntlet.keys import ACTION_DIM
from gauntlet.runtime.config_args import option, parse_config, require_at_least
from gauntlet.runtime.progress import Progress

# robomimic camera observation key -> dataset camera name
CAMERA_OBS_KEYS: dict[str, str] = {"agentview_image": "agentview", "robot0_eye_in_hand_image": "wrist"}
STATE_OBS_KEYS: dict[str, int] = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}
# robosuite / MimicGen env class (without its _D<k> suffix) -> gauntlet task name
ENV_TO_TASK: dict[str, str] = {"Lift": "lift", "Stack": "stack", "Square": "square",
                               "NutAssemblySquare": "square", "PickPlaceCan": "pick_place_can"}


@dataclass(frozen=True)
class ImportConfig:
    """Imports a robomimic/MimicGen HDF5 file (streamed demo by demo) into a gauntlet dataset."""

    file: str = option(help="robomimic/MimicGen .hdf5 file", positional=True)
    out: str = option(help="dataset directory to create")
    task: str = option("", help="task name for the episodes (default: derived from env_args env_name)")
    variant: str = option("", help="variant (default: the env name's _D<k> suffix, else 'D0')")
    prompt: str = option("", help="language instruction (default: the task's gauntlet instruction)")
    images: bool = option(True, help="import camera images (agentview, wrist) when the file has them")
    image_size: int = option(0, help="resize images to this square size (pixels; 0 = keep)")
    flip_images: bool = option(True, help="flip images vertically: robosuite renders HDF5 images in "
                                          "OpenGL convention (upside down); gauntlet's renders are upright")
    limit: int = option(0, help="import at most this many demos (0 = all), in demo order")
    valid_fraction: float = option(0.0, help="when the file has no mask/ group: fraction of demos "
                                             "(the last ones) put in the 'valid' split")
    overwrite: bool = option(False, help="replace an existing dataset at --out")

    def __post_init__(self) -> None:
        require_at_least(self, 0, "image_size", "limit")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")


def _demo_sort_key(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else 1 << 62, name)


def task_of_env(env_name: str) -> tuple[str, str]:
    """(task, variant) from a robosuite/MimicGen env name, e.g. "Stack_D1" -> ("stack", "D1")."""
    base, sep, suffix = env_name.partition("_D")
    variant = f"D{suffix}" if sep and suffix.isdigit() else ""
    if not variant:
        base = env_name
    return ENV_TO_TASK.get(base, base.lower()), variant


def build_state(eef_pos: np.ndarray, eef_quat_xyzw: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """(T, 8) float32 state: eef position, eef axis-angle, gripper finger positions."""
    from gauntlet.envs.rotations import quat_xyzw_to_axis_angle

    return np.concatenate([eef_pos, quat_xyzw_to_axis_angle(eef_quat_xyzw), gripper_qpos], axis=1).astype(np.float32)


def _dataset(f: Any, file: Path, path: str) -> Any:
    import h5py

    node = f.get(path)
    if node is None:
        raise DatasetError(file, f"HDF5 path {path!r} is missing")
    if not isinstance(node, h5py.Dataset):
        raise DatasetError(file, f"HDF5 path {path!r} is a group, expected a dataset")
    return node


def _attr_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_env_args(f: Any, file: Path) -> dict[str, Any]:
    data = f.get("data")
    if data is None:
        raise DatasetError(file, "HDF5 group 'data' is missing (not a robomimic file)")
    if "env_args" not in data.attrs:
        raise DatasetError(file, "HDF5 attribute 'data'.attrs['env_args'] is missing")
    try:
        env_args = json.loads(_attr_str(data.attrs["env_args"]))
    except json.JSONDecodeError as exc:
        raise DatasetError(file, f"HDF5 attribute 'data'.attrs['env_args'] is not valid JSON ({exc})") from None
    if not isinstance(env_args, dict) or not isinstance(env_args.get("env_name"), str):
        raise DatasetError(file, "HDF5 attribute 'data'.attrs['env_args'] has no string 'env_name'")
    return env_args


def read_masks(f: Any, file: Path) -> dict[str, set[str]]:
    """{mask name: demo names} from the optional mask/ group."""
    masks: dict[str, set[str]] = {}
    group = f.get("mask")
    if group is None:
        return masks
    for name in group:
        arr = _dataset(f, file, f"mask/{name}")[()]
        masks[name] = {_attr_str(v) for v in np.atleast_1d(arr).tolist()}
    return masks


def read_demo(f: Any, file: Path, demo: str, want_images: bool) -> dict[str, Any]:
    """One demo's arrays, checked: shapes, lengths, num_samples."""
    base = f"data/{demo}"
    actions = np.asarray(_dataset(f, file, f"{base}/actions")[()])
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        raise DatasetError(file, f"HDF5 dataset '{base}/actions' has shape {actions.shape}, expected (T, {ACTION_DIM})")
    n = actions.shape[0]
    if n < 1:
        raise DatasetError(file, f"HDF5 dataset '{base}/actions' is empty")
    group = f[base]
    if "num_samples" in group.attrs and int(group.attrs["num_samples"]) != n:
        raise DatasetError(file, f"HDF5 attribute '{base}'.attrs['num_samples'] is {int(group.attrs['num_samples'])} "
                                 f"but '{base}/actions' has {n} rows (inconsistent lengths)")
    states = np.asarray(_dataset(f, file, f"{base}/states")[()])
    if states.ndim != 2 or states.shape[0] != n:
        hint = " (inconsistent lengths)" if states.ndim == 2 else ""
        raise DatasetError(file, f"HDF5 dataset '{base}/states' has shape {states.shape}, expected ({n}, S){hint}")
    obs: dict[str, np.ndarray] = {}
    for key, width in STATE_OBS_KEYS.items():
        arr = np.asarray(_dataset(f, file, f"{base}/obs/{key}")[()])
        if arr.shape != (n, width):
            raise DatasetError(file, f"HDF5 dataset '{base}/obs/{key}' has shape {arr.shape}, expected ({n}, {width})"
                                     + (" (inconsistent lengths)" if arr.ndim == 2 and arr.shape[1] == width else ""))
        obs[key] = arr
    if "model_file" not in group.attrs:
        raise DatasetError(file, f"HDF5 attribute '{base}'.attrs['model_file'] (model XML) is missing")
    images: dict[str, np.ndarray] = {}
    if want_images and "obs" in group:
        for key, cam in CAMERA_OBS_KEYS.items():
            if key not in group["obs"]:
                continue
            arr = np.asarray(_dataset(f, file, f"{base}/obs/{key}")[()])
            if arr.ndim != 4 or arr.shape[0] != n or arr.shape[3] != 3 or arr.dtype != np.uint8:
                raise DatasetError(file, f"HDF5 dataset '{base}/obs/{key}' has shape {arr.shape} {arr.dtype}, "
                                         f"expected ({n}, H, W, 3) uint8")
            images[cam] = arr
    rewards = None
    if "rewards" in group:
        rewards = np.asarray(_dataset(f, file, f"{base}/rewards")[()]).reshape(-1)
        if rewards.shape[0] != n:
            raise DatasetError(file, f"HDF5 dataset '{base}/rewards' has {rewards.shape[0]} rows, expected {n} "
                                     "(inconsistent lengths)")
    return {
        "actions": actions, "states": states, "obs": obs, "images": images, "rewards": rewards,
        "model_xml": _attr_str(group.attrs["model_file"]),
    }


def import_hdf5(cfg: ImportConfig) -> Path:
    """Imports `cfg.file` into `cfg.out`; returns the dataset path."""
    import h5py

    file = Path(cfg.file)
    if not file.is_file():
        raise DatasetError(file, "no such HDF5 file")
    try:
        f = h5py.File(file, "r")
    except OSError as exc:
        raise DatasetError(file, f"not a readable HDF5 file ({exc})") from None
    with f:
        env_args = read_env_args(f, file)
        task, variant, prompt = _task_of(cfg, env_args)
        demos = sorted((k for k in f["data"] if k.startswith("demo")), key=_demo_sort_key)
        if not demos:
            raise DatasetError(file, "HDF5 group 'data' holds no demo_<i> groups")
        if cfg.limit:
            demos = demos[: cfg.limit]
        masks = read_masks(f, file)
        splits = _splits_of(demos, masks, cfg.valid_fraction)
        env_kwargs = env_args.get("env_kwargs", {}) or {}
        robots = env_kwargs.get("robots", "Panda")
        robot = robots[0] if isinstance(robots, list) and robots else str(robots)
        fps = int(env_kwargs.get("control_freq", 20))
        source = {"kind": "hdf5", "file": str(file.resolve()), "file_bytes": file.stat().st_size,
                  "num_demos_in_file": len(f["data"]), "masks": {k: len(v) for k, v in masks.items()},
                  "flip_images": cfg.flip_images, "image_size": cfg.image_size or None}
        message = (f"[data import-hdf5] {file}: {len(demos)} demos of {env_args['env_name']} -> {cfg.out} "
                   f"(task={task}, variant={variant})")
        print(message, flush=True)
        progress = Progress(len(demos), "data import-hdf5", unit="demos")
        with DatasetWriter(cfg.out, source=source, fps=fps, robot=robot, overwrite=cfg.overwrite) as writer:
            writer.register_env(task, variant, {"env_name": env_args["env_name"], "robot": robot,
                                                "control_freq": fps, "env_args": env_args})
            for demo in demos:
                d = read_demo(f, file, demo, cfg.images)
                try:
                    _add_demo(writer, cfg, d, demo, task=task, variant=variant, prompt=prompt, split=splits[demo])
                except DatasetError as exc:
                    raise DatasetError(file, f"HDF5 group 'data/{demo}': {exc.problem}") from None
                elapsed = max(time.monotonic() - progress.start, 1e-9)
                progress.update(extra=f"frames={writer.num_frames} ({writer.num_frames / elapsed:.0f} frames/s)")
            return writer.finalize()


def _task_of(cfg: ImportConfig, env_args: dict[str, Any]) -> tuple[str, str, str]:
    """(task, variant, prompt): the flags', else derived from the file's env name and gauntlet's task."""
    from gauntlet.envs.tasks import TASKS

    env_task, env_variant = task_of_env(env_args["env_name"])
    task = cfg.task or env_task
    variant = cfg.variant or env_variant or "D0"
    prompt = cfg.prompt or (TASKS[task].instruction if task in TASKS else task.replace("_", " "))
    return task, variant, prompt


def _splits_of(demos: list[str], masks: dict[str, set[str]], valid_fraction: float) -> dict[str, str]:
    """demo -> split: from the file's mask/ group when it has one, else the last `valid_fraction` are 'valid'."""
    if masks:
        train, valid = masks.get("train", set()), masks.get("valid", set())
        return {d: ("valid" if d in valid else "train" if d in train else "unassigned") for d in demos}
    n_valid = int(round(len(demos) * valid_fraction))
    return {d: ("valid" if i >= len(demos) - n_valid else "train") for i, d in enumerate(demos)}


def _add_demo(writer: DatasetWriter, cfg: ImportConfig, d: dict[str, Any], demo: str, *, task: str,
              variant: str, prompt: str, split: str) -> None:
    """One demo (as read_demo returns it) as a dataset episode: state built, images flipped/resized."""
    from gauntlet.envs.fingerprint import canonical_xml

    state = build_state(d["obs"]["robot0_eef_pos"], d["obs"]["robot0_eef_quat"], d["obs"]["robot0_gripper_qpos"])
    images = {}
    for cam, arr in d["images"].items():
        if cfg.flip_images:
            arr = arr[:, ::-1]
        if cfg.image_size:
            arr = np.stack([resize_image(np.ascontiguousarray(im), cfg.image_size) for im in arr])
        images[cam] = np.ascontiguousarray(arr)
    rewards = d["rewards"]
    success = True if rewards is None else bool(np.max(rewards) > 0)
    xml = d["model_xml"]
    model_hash = "sha256:" + hashlib.sha256(canonical_xml(xml).encode()).hexdigest()
    writer.add_episode(
        state, d["actions"], task=task, variant=variant, prompt=prompt, success=success,
        sim_states=d["states"], model_xml=xml, images=images or None, split=split,
        seed=None, fingerprint=model_hash, source_episode=demo,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ImportConfig, argv, prog="gauntlet data import-hdf5", description=ImportConfig.__doc__)
    return run_dataset_command("gauntlet data import-hdf5", "data import-hdf5", lambda: import_hdf5(cfg))


if __name__ == "__main__":
    sys.exit(main())
