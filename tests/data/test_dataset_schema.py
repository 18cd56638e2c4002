"""meta/info.json checks: a missing, garbled, future-version or inconsistent manifest is refused by name."""

from __future__ import annotations

import pytest

from gauntlet.data.dataset_schema import DatasetError
from gauntlet.data.dataset_validation import validate


def test_missing_or_garbled_info_json(make_dataset, edit_info) -> None:
    root, _ = make_dataset([3])
    info = root / "meta" / "info.json"
    info.write_text("{not json")
    with pytest.raises(DatasetError, match="garbled JSON") as exc:
        validate(root)
    assert exc.value.path == str(info)
    info.unlink()
    with pytest.raises(DatasetError, match=r"meta/info\.json: missing"):
        validate(root)


def test_unknown_format_version(make_dataset, edit_info) -> None:
    root, _ = make_dataset([3])
    edit_info(root, lambda info: info.update(format_version=99))
    with pytest.raises(DatasetError, match=r"'format_version' is 99; this code reads version 1"):
        validate(root)


def test_feature_dim_mismatch(make_dataset, edit_info) -> None:
    root, _ = make_dataset([3])
    edit_info(root, lambda info: info["features"]["action"].update(shape=[6]))
    with pytest.raises(DatasetError, match=r"features\['action'\]\.shape is \[6\] but action_dim is 7"):
        validate(root)
    # info.json consistent but the episode file holds another width.
    edit_info(root, lambda info: (info["features"]["action"].update(shape=[6]), info.update(action_dim=6)))
    with pytest.raises(DatasetError, match=r"episode 0: column 'action' has shape \(7,\), features say \[6\]"):
        validate(root)


def test_null_episode_tags_read_as_their_defaults(make_dataset) -> None:
    """A foreign episodes table with null tags (None, NaN, <NA>) holds untagged episodes, not recovery ones."""
    import numpy as np
    import pandas as pd

    from gauntlet.data.dataset_reader import open_dataset
    from gauntlet.data.dataset_schema import EpisodeTags

    root, _ = make_dataset([3, 2, 4])
    path = root / "meta" / "episodes.parquet"
    table = pd.read_parquet(path)
    table["recovery"] = pd.Series([np.nan, None, True], dtype=object)
    table["scene_id"] = pd.Series([None, np.nan, "s1"], dtype=object)
    table["error_type"] = pd.array([pd.NA, "drop", pd.NA], dtype="string")
    table.to_parquet(path)
    eps = open_dataset(root).episodes
    assert eps["recovery"].tolist() == [False, False, True]
    assert eps["scene_id"].tolist() == ["", "", "s1"] and eps["error_type"].tolist() == ["", "drop", ""]
    assert EpisodeTags.from_row({"recovery": float("nan"), "scene_id": None, "error_type": pd.NA,
                                 "origin": np.nan}) == EpisodeTags()
    assert EpisodeTags.from_row({"recovery": True, "scene_id": "s", "error_type": "drop"}) == \
        EpisodeTags(recovery=True, scene_id="s", error_type="drop")
