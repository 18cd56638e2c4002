"""DatasetWriter: atomic writes (nothing that reads as a dataset until finalize), explicit overwrite,
and bad episodes rejected with the episode, frame and field named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gauntlet.data.dataset_reader import open_dataset
from gauntlet.data.dataset_schema import DatasetError
from gauntlet.data.dataset_writer import DatasetWriter


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
