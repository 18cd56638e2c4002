"""`gauntlet data export-lerobot`: the LeRobot v3.0 layout read back with pyarrow/pandas alone, and
(slow) with LeRobot's own `LeRobotDataset`, offline, in both releases Gauntlet hosts (the default,
0.6.1, and 0.4.4: `lerobot@0.4.4`).

LeRobot pins its own dependencies and must never enter Gauntlet's environment, so the slow check runs
in a Ray task on the test session's Ray with the runtime_env Gauntlet's LeRobot replicas use
(gauntlet.policies.lerobot.environment: uv, lerobot[dataset,diffusion,pi,smolvla]==0.6.1, uv's cache on). Ray builds it once per
session and keys it by its install spec, so the import tests and the LeRobot policy tests reuse the
same virtualenv rather than each building one (a subprocess venv per test module would download and
install torch again), and the check exercises exactly the isolation production uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gauntlet.data.dataset_writer import DatasetWriter
from gauntlet.data.images import decode_png
from gauntlet.data.lerobot_export import ExportConfig, export_lerobot
from gauntlet.data.lerobot_format import CODEBASE_VERSION, DEFAULT_FEATURES
from gauntlet.platform.cli import main as cli
from gauntlet.policies.lerobot.environment import LEROBOT_VERSION

LENGTHS = [5, 3, 7]
IMAGE_SIZE = 16


@pytest.fixture
def exported(make_dataset, tmp_path):
    src, written = make_dataset(LENGTHS, image_size=IMAGE_SIZE, sim=True)
    out = export_lerobot(ExportConfig(dataset=str(src), out=str(tmp_path / "lerobot")))
    return src, written, out


def _frames(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((out / "data").glob("*/*.parquet"))], ignore_index=True)


def test_layout_and_info(exported):
    _, _, out = exported
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == CODEBASE_VERSION == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(LENGTHS), 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] is None and info["fps"] == 20 and info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert list(feats) == ["observation.state", "action", "observation.images.agentview",
                           "observation.images.wrist", *DEFAULT_FEATURES]
    assert feats["observation.state"]["shape"] == [8] and feats["action"]["shape"] == [7]
    assert feats["observation.images.wrist"] == {"dtype": "image", "shape": [IMAGE_SIZE, IMAGE_SIZE, 3],
                                                 "names": ["height", "width", "channel"], "fps": 20}
    assert (out / "meta/tasks.parquet").is_file() and (out / "meta/episodes/chunk-000/file-000.parquet").is_file()
    assert sorted(p.name for p in (out / "sim").iterdir())[:2] == ["episode_000000.npz", "episode_000000.xml"]
    assert not list(out.parent.glob(".lerobot.*"))  # the staging directory is gone


def test_values_match_source_with_pandas_alone(exported):
    _, written, out = exported
    frames = _frames(out)
    assert len(frames) == sum(LENGTHS)
    tasks = pd.read_parquet(out / "meta/tasks.parquet")
    task_of = {int(i): str(t) for t, i in zip(tasks.index, tasks["task_index"], strict=True)}
    episodes = pd.read_parquet(out / "meta/episodes/chunk-000/file-000.parquet")
    for ep, n in enumerate(LENGTHS):
        rows = frames[frames["episode_index"] == ep].sort_values("frame_index")
        assert len(rows) == n == episodes.loc[ep, "length"]
        assert list(episodes.loc[ep, "tasks"]) == [written["prompts"][ep]]
        np.testing.assert_array_equal(np.stack(rows["observation.state"].to_numpy()), written["states"][ep])
        np.testing.assert_array_equal(np.stack(rows["action"].to_numpy()), written["actions"][ep])
        assert {task_of[i] for i in rows["task_index"]} == {written["prompts"][ep]}
        np.testing.assert_allclose(rows["timestamp"].to_numpy(), np.arange(n) / 20, atol=1e-6)
        start = int(episodes.loc[ep, "dataset_from_index"])
        assert rows["index"].tolist() == list(range(start, start + n))
        for cam in ("agentview", "wrist"):
            decoded = np.stack([decode_png(c["bytes"]) for c in rows[f"observation.images.{cam}"]])
            np.testing.assert_array_equal(decoded, written["images"][ep][cam])


def test_stats_in_lerobot_shapes(exported):
    _, written, out = exported
    stats = json.loads((out / "meta/stats.json").read_text())
    assert set(stats) == {"observation.state", "action", "observation.images.agentview",
                          "observation.images.wrist", *DEFAULT_FEATURES}
    states = np.concatenate(written["states"])
    np.testing.assert_allclose(stats["observation.state"]["mean"], states.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], states.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["max"], np.concatenate(written["actions"]).max(0))
    assert stats["action"]["count"] == [sum(LENGTHS)]
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert np.asarray(stats["observation.images.agentview"]["mean"]).shape == (3, 1, 1)


def test_cli_without_images_and_refuses_a_foreign_directory(make_dataset, tmp_path, capsys):
    src, _ = make_dataset([4, 2], image_size=8)
    out = tmp_path / "lr"
    assert cli(["data", "export-lerobot", str(src), "--out", str(out), "--no-images"]) == 0
    info = json.loads((out / "meta/info.json").read_text())
    assert not [f for f in info["features"].values() if f["dtype"] == "image"]
    assert pq.read_schema(next((out / "data").glob("*/*.parquet"))).names[:2] == ["observation.state", "action"]
    assert cli(["data", "export-lerobot", str(src), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    assert cli(["data", "export-lerobot", str(src), "--out", str(tmp_path / "other")]) == 1
    assert (tmp_path / "other" / "x.txt").read_text() == "mine"


def test_interrupted_export_leaves_nothing(make_dataset, tmp_path, monkeypatch):
    import gauntlet.data.lerobot_export as mod

    src, _ = make_dataset([3, 3])
    monkeypatch.setattr(mod, "_write_meta", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        export_lerobot(ExportConfig(dataset=str(src), out=str(tmp_path / "lr")))
    assert not (tmp_path / "lr").exists() and not list(tmp_path.glob(".lr.*"))


def test_data_files_roll_over_at_the_size_limit(make_dataset, tmp_path):
    src, _ = make_dataset([40] * 6, image_size=64)  # ~3 x 12 KiB PNG frames; 1 MiB per file
    out = export_lerobot(ExportConfig(dataset=str(src), out=str(tmp_path / "lr"), data_file_size_mb=1))
    files = sorted((out / "data/chunk-000").glob("file-*.parquet"))
    assert len(files) > 1
    episodes = pd.read_parquet(out / "meta/episodes/chunk-000/file-000.parquet")
    for _, row in episodes.iterrows():  # each episode lies whole in the file its row names
        table = pq.read_table(out / f"data/chunk-000/file-{row['data/file_index']:03d}.parquet")
        assert (table.column("episode_index").to_numpy() == row["episode_index"]).sum() == row["length"]


# ---------------------------------------------------------------------- LeRobot itself (slow)
def _load_with_lerobot(root: str, fps: int) -> dict[str, Any]:
    """Runs inside the lerobot environment: what LeRobotDataset makes of the export."""
    from importlib.metadata import version

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:  # lerobot >= 0.5 moved it; 0.4.x keeps it beside the dataset utilities
        from lerobot.utils.feature_utils import dataset_to_policy_features
    except ImportError:
        from lerobot.datasets.utils import dataset_to_policy_features

    ds = LeRobotDataset("gauntlet/export-test", root=root)
    items = [ds[i] for i in range(len(ds))]
    chunked = LeRobotDataset("gauntlet/export-test", root=root,
                             delta_timestamps={"action": [k / fps for k in range(4)]})
    last = chunked[len(chunked) - 1]  # an ACT-style action chunk, padded past the episode's end
    policy = dataset_to_policy_features(ds.meta.features)
    return {
        "release": version("lerobot"), "len": len(ds), "num_episodes": ds.num_episodes, "fps": ds.fps,
        "features": {k: list(v["shape"]) for k, v in ds.features.items()},
        "policy_features": {k: [v.type.name, list(v.shape)] for k, v in policy.items()},
        "camera_keys": list(ds.meta.camera_keys),
        "state": [it["observation.state"].numpy().tolist() for it in items],
        "action": [it["action"].numpy().tolist() for it in items],
        "episode_index": [int(it["episode_index"]) for it in items],
        "task": [it["task"] for it in items],
        "images": {cam: [(it[cam].numpy() * 255).round().astype("uint8").tolist() for it in items]
                   for cam in ds.meta.camera_keys},
        "chunk_shape": list(last["action"].shape), "chunk_pad": last["action_is_pad"].numpy().tolist(),
        "stats_keys": sorted(ds.meta.stats),
    }


def _source(root: Path) -> dict[str, Any]:
    """A Gauntlet dataset with both cameras, written with the real writer; returns what was written."""
    rng = np.random.default_rng(1)
    written: dict[str, Any] = {"states": [], "actions": [], "images": [], "prompts": []}
    with DatasetWriter(root, source={"kind": "test"}) as writer:
        for ep, n in enumerate(LENGTHS):
            states = rng.normal(size=(n, 8)).astype(np.float32)
            actions = rng.uniform(-1, 1, size=(n, 7)).astype(np.float32)
            images = {cam: rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
                      for cam in ("agentview", "wrist")}
            prompt = f"lift the cube {ep % 2}"
            writer.add_episode(states, actions, task="lift", variant="D0", prompt=prompt, success=True,
                               images=images)
            for key, value in (("states", states), ("actions", actions), ("images", images), ("prompts", prompt)):
                written[key].append(value)
    return written


@pytest.fixture(scope="module", params=[LEROBOT_VERSION, "0.4.4"])
def lerobot_view(request, run_in_lerobot, tmp_path_factory):
    """One lerobot-environment task per release: everything that release's LeRobotDataset sees of one export."""
    tmp = tmp_path_factory.mktemp("lerobot_export")
    written = _source(tmp / "gauntlet")
    out = export_lerobot(ExportConfig(dataset=str(tmp / "gauntlet"), out=str(tmp / "lerobot")))
    return request.param, written, run_in_lerobot(_load_with_lerobot, str(out), 20, release=request.param)


@pytest.mark.slow
def test_lerobot_dataset_loads_the_export_offline(lerobot_view):
    release, written, seen = lerobot_view
    assert seen["release"] == release
    n = sum(LENGTHS)
    assert (seen["len"], seen["num_episodes"], seen["fps"]) == (n, len(LENGTHS), 20)
    assert seen["features"]["observation.state"] == [8] and seen["features"]["action"] == [7]
    assert seen["camera_keys"] == ["observation.images.agentview", "observation.images.wrist"]
    # what a LeRobot policy is built from: images as VISUAL (C, H, W), state, action
    assert seen["policy_features"]["observation.images.wrist"] == ["VISUAL", [3, IMAGE_SIZE, IMAGE_SIZE]]
    assert seen["policy_features"]["observation.state"] == ["STATE", [8]]
    assert seen["policy_features"]["action"] == ["ACTION", [7]]
    np.testing.assert_array_equal(np.array(seen["state"], dtype=np.float32), np.concatenate(written["states"]))
    np.testing.assert_array_equal(np.array(seen["action"], dtype=np.float32), np.concatenate(written["actions"]))
    assert seen["episode_index"] == [ep for ep, k in enumerate(LENGTHS) for _ in range(k)]
    assert seen["task"] == [written["prompts"][ep] for ep, k in enumerate(LENGTHS) for _ in range(k)]
    for cam in ("agentview", "wrist"):
        chw = np.array(seen["images"][f"observation.images.{cam}"], dtype=np.uint8)
        np.testing.assert_array_equal(chw.transpose(0, 2, 3, 1),
                                      np.concatenate([im[cam] for im in written["images"]]))
    assert seen["chunk_shape"] == [4, 7] and seen["chunk_pad"] == [False, True, True, True]
    assert {"observation.state", "action", "observation.images.agentview"} <= set(seen["stats_keys"])
