"""Dataset format: round trip through the real writer/reader, pandas-only reading, atomic writes,
and every bad input `validate` must reject with the file and field named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gauntlet.data.dataset_format import (
    EPISODE_COLUMNS,
    FORMAT_VERSION,
    Dataset,
    DatasetError,
    DatasetWriter,
    open_dataset,
    validate,
)
from gauntlet.data.normalization import NormStats


def _edit_info(root: Path, edit) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


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


def test_interrupted_write_leaves_nothing_that_reads_as_a_dataset(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(root, source={"kind": "test"}) as writer:
            writer.add_episode(np.zeros((3, 8)), np.zeros((3, 7)), task="lift", variant="D0", prompt="p",
                               success=True)
            raise RuntimeError("boom")
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []  # the staging directory is gone too
    # A writer that dies without finalize (a killed process) leaves only its hidden staging dir.
    writer = DatasetWriter(root, source={"kind": "test"})
    writer.add_episode(np.zeros((3, 8)), np.zeros((3, 7)), task="lift", variant="D0", prompt="p", success=True)
    assert not root.exists()
    with pytest.raises(DatasetError, match="no such dataset"):
        open_dataset(root)
    assert [p.name.startswith(".ds.partial-") for p in tmp_path.iterdir()] == [True]
    writer.abort()
    # A dataset whose info.json never got written (crash inside meta/) is refused by name.
    (root / "meta").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"info\.json: missing"):
        open_dataset(root)


def test_overwrite_is_explicit(make_dataset) -> None:
    root, _ = make_dataset([2])
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(root, source={"kind": "test"})
    with DatasetWriter(root, source={"kind": "test"}, overwrite=True) as writer:
        writer.add_episode(np.ones((9, 8)), np.ones((9, 7)), task="stack", variant="D1", prompt="p", success=True)
    ds = open_dataset(root)
    assert ds.num_frames == 9 and ds.episodes["task"].tolist() == ["stack"]
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no staging/trash left behind


def test_writer_rejects_bad_episodes(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "ds", source={"kind": "test"})
    kw = {"task": "lift", "variant": "D0", "prompt": "p", "success": True}
    with pytest.raises(DatasetError, match=r"episode 0: states must have shape \(T>=1, 8\)"):
        writer.add_episode(np.zeros((3, 9)), np.zeros((3, 7)), **kw)
    with pytest.raises(DatasetError, match=r"actions must have shape \(3, 7\)"):
        writer.add_episode(np.zeros((3, 8)), np.zeros((4, 7)), **kw)
    bad = np.zeros((3, 7))
    bad[2, 5] = np.nan
    with pytest.raises(DatasetError, match=r"episode 0 frame 2: actions\[5\]"):
        writer.add_episode(np.zeros((3, 8)), bad, **kw)
    with pytest.raises(DatasetError, match="unknown camera"):
        writer.add_episode(np.zeros((3, 8)), np.zeros((3, 7)), images={"top": np.zeros((3, 4, 4, 3), np.uint8)}, **kw)
    writer.add_episode(np.zeros((3, 8)), np.zeros((3, 7)), images={"agentview": np.zeros((3, 4, 4, 3), np.uint8)}, **kw)
    with pytest.raises(DatasetError, match="same cameras at the same size"):
        writer.add_episode(np.zeros((2, 8)), np.zeros((2, 7)), images={"agentview": np.zeros((2, 5, 5, 3), np.uint8)},
                           **kw)
    writer.abort()
    empty = DatasetWriter(tmp_path / "empty", source={"kind": "test"})
    with pytest.raises(DatasetError, match="no episodes"):
        empty.finalize()
    assert not (tmp_path / "empty").exists()


def test_validate_accepts_a_good_dataset_and_checks_dims(make_dataset) -> None:
    root, _ = make_dataset([4, 4], sim=True)
    ds = validate(root, expected_action_dim=7, expected_state_dim=8, split="train")
    assert isinstance(ds, Dataset)
    with pytest.raises(DatasetError, match=r"action_dim is 7, the policy expects 6"):
        validate(root, expected_action_dim=6)
    with pytest.raises(DatasetError, match=r"state_dim is 8, the policy expects 9"):
        validate(root, expected_state_dim=9)
    with pytest.raises(DatasetError, match=r"no split 'valid'"):
        validate(root, split="valid")


def test_missing_or_garbled_info_json(make_dataset) -> None:
    root, _ = make_dataset([3])
    info = root / "meta" / "info.json"
    info.write_text("{not json")
    with pytest.raises(DatasetError, match="garbled JSON") as exc:
        validate(root)
    assert exc.value.path == str(info)
    info.unlink()
    with pytest.raises(DatasetError, match=r"meta/info\.json: missing"):
        validate(root)


def test_unknown_format_version(make_dataset) -> None:
    root, _ = make_dataset([3])
    _edit_info(root, lambda info: info.update(format_version=99))
    with pytest.raises(DatasetError, match=r"'format_version' is 99; this code reads version 1"):
        validate(root)


def test_feature_dim_mismatch(make_dataset) -> None:
    root, _ = make_dataset([3])
    _edit_info(root, lambda info: info["features"]["action"].update(shape=[6]))
    with pytest.raises(DatasetError, match=r"features\['action'\]\.shape is \[6\] but action_dim is 7"):
        validate(root)
    # info.json consistent but the episode file holds another width.
    _edit_info(root, lambda info: (info["features"]["action"].update(shape=[6]), info.update(action_dim=6)))
    with pytest.raises(DatasetError, match=r"episode 0: column 'action' has shape \(7,\), features say \[6\]"):
        validate(root)


def test_nan_frames_are_named_by_episode_and_frame(make_dataset) -> None:
    root, _ = make_dataset([4, 6, 5])
    path = root / "data" / "chunk-000" / "episode_000001.parquet"
    table = pq.read_table(path)
    state = np.stack(table.column("observation.state").to_numpy(zero_copy_only=False))
    state[3, 2] = np.inf
    flat = pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1).astype(np.float32)), 8)
    pq.write_table(table.set_column(table.schema.get_field_index("observation.state"), "observation.state", flat),
                   path)
    with pytest.raises(DatasetError, match=r"episode 1 frame 3: observation\.state\[2\] is inf") as exc:
        validate(root)
    assert exc.value.path == str(path)
    validate(root, check_values=False)  # structure alone is fine


def test_empty_split_and_missing_files(make_dataset) -> None:
    root, _ = make_dataset([3, 3])
    _edit_info(root, lambda info: info["splits"].update(valid=[]))
    with pytest.raises(DatasetError, match=r"splits\['valid'\] is empty"):
        validate(root)
    _edit_info(root, lambda info: info["splits"].pop("valid"))
    (root / "data" / "chunk-000" / "episode_000001.parquet").unlink()
    with pytest.raises(DatasetError, match="episode 1: data file is missing"):
        validate(root)


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
