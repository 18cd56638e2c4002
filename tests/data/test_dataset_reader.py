"""Dataset reading: round trip through the real writer/reader, pandas-only reading, norm stats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gauntlet.data.dataset_reader import open_dataset
from gauntlet.data.dataset_schema import EPISODE_COLUMNS, FORMAT_VERSION, DatasetError
from gauntlet.data.dataset_validation import validate
from gauntlet.data.normalization import NormStats


def test_round_trip_with_images_and_sim_states(make_dataset) -> None:
    root, written = make_dataset([5, 3, 7], image_size=16, sim=True, splits=["train", "valid", "train"])
    ds = open_dataset(root)
    info = ds.info
    assert info["format"] == "gauntlet-dataset" and info["format_version"] == FORMAT_VERSION
    assert (info["total_episodes"], info["total_frames"], info["fps"]) == (3, 15, 20)
    assert info["features"]["observation.state"]["shape"] == [8]
    assert info["features"]["action"]["shape"] == [7]
    assert info["features"]["observation.images.agentview"] == {
        "dtype": "image", "shape": [16, 16, 3], "names": ["height", "width", "channel"], "encoding": "png"}
    assert info["data_path"] == "data/chunk-{chunk:03d}/episode_{episode:06d}.parquet"
    assert info["splits"] == {"train": [0, 2], "valid": [1]}
    assert ds.cameras == ["agentview", "wrist"] and ds.num_frames == 15
    assert ds.split("train").tolist() == [0, 2]

    for ep in range(3):
        got = ds.episode(ep, sim=True)
        np.testing.assert_array_equal(got["observation.state"], written["states"][ep])
        np.testing.assert_array_equal(got["action"], written["actions"][ep])
        for cam in ("agentview", "wrist"):  # PNG is lossless
            np.testing.assert_array_equal(got[f"observation.images.{cam}"], written["images"][ep][cam])
        np.testing.assert_array_equal(got["sim_states"], written["sim"][ep])
        assert got["model_xml"] == "<mujoco model='t'/>"
        n = len(written["states"][ep])
        assert got["frame_index"].tolist() == list(range(n))
        assert got["next.done"].tolist() == [False] * (n - 1) + [True]
        np.testing.assert_allclose(got["timestamp"], np.arange(n) / 20.0, rtol=1e-6)
    assert ds.episode(2)["index"].tolist() == list(range(8, 15))

    cols = ds.load_columns(["observation.state", "action"], episodes=[2, 0])
    np.testing.assert_array_equal(cols["action"], np.concatenate([written["actions"][2], written["actions"][0]]))
    np.testing.assert_array_equal(ds.frame_indices([2, 0]), np.r_[8:15, 0:5])


def test_pandas_alone_reads_every_table(make_dataset) -> None:
    root, written = make_dataset([4, 6], image_size=8)
    episodes = pd.read_parquet(root / "meta" / "episodes.parquet")
    assert list(episodes.columns) == list(EPISODE_COLUMNS)
    assert episodes["success"].dtype == bool and episodes["length"].tolist() == [4, 6]
    assert episodes["dataset_from_index"].tolist() == [0, 4]
    assert episodes["prompt"].tolist() == ["task 0", "task 1"]
    frames = pd.read_parquet(root / "data" / "chunk-000" / "episode_000001.parquet")
    assert {"index", "episode_index", "frame_index", "timestamp", "observation.state", "action",
            "next.done", "observation.images.agentview", "observation.images.wrist"} <= set(frames.columns)
    np.testing.assert_array_equal(np.stack(frames["observation.state"].to_numpy()), written["states"][1])
    assert frames["index"].tolist() == list(range(4, 10))
    schema = pq.read_schema(root / "data" / "chunk-000" / "episode_000000.parquet")
    assert schema.field("observation.state").type == pa.list_(pa.float32(), 8)  # fixed-size list
    assert schema.field("action").type == pa.list_(pa.float32(), 7)
    assert schema.field("observation.images.wrist").type == pa.binary()


def test_missing_stats_file_names_the_command(make_dataset) -> None:
    root, _ = make_dataset([3, 2])
    ds = open_dataset(root)
    assert ds.stats_path == root / "meta" / "stats.json"
    with pytest.raises(DatasetError, match=rf"run `gauntlet data stats {root}` first"):
        ds.load_norm_stats()
    with pytest.raises(DatasetError, match="missing normalisation statistics"):
        validate(root, require_stats=True)
    NormStats.identity(8, 6).save(ds.stats_path)  # wrong action dim
    with pytest.raises(DatasetError, match=r"'actions' has dimension 6, expected 7"):
        ds.load_norm_stats()
    NormStats.identity(8, 7).save(ds.stats_path)
    assert ds.load_norm_stats()["actions"].dim == 7
