"""`validate`, the training pre-flight: every bad input rejected with the file and field named."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gauntlet.data.dataset_reader import Dataset
from gauntlet.data.dataset_schema import DatasetError
from gauntlet.data.dataset_validation import validate


def test_validate_accepts_a_good_dataset_and_checks_dims(make_dataset, edit_info) -> None:
    root, _ = make_dataset([4, 4], sim=True)
    ds = validate(root, expected_action_dim=7, expected_state_dim=8, split="train")
    assert isinstance(ds, Dataset)
    with pytest.raises(DatasetError, match=r"action_dim is 7, the policy expects 6"):
        validate(root, expected_action_dim=6)
    with pytest.raises(DatasetError, match=r"state_dim is 8, the policy expects 9"):
        validate(root, expected_state_dim=9)
    with pytest.raises(DatasetError, match=r"no split 'valid'"):
        validate(root, split="valid")


def test_nan_frames_are_named_by_episode_and_frame(make_dataset, edit_info) -> None:
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


def test_empty_split_and_missing_files(make_dataset, edit_info) -> None:
    root, _ = make_dataset([3, 3])
    edit_info(root, lambda info: info["splits"].update(valid=[]))
    with pytest.raises(DatasetError, match=r"splits\['valid'\] is empty"):
        validate(root)
    edit_info(root, lambda info: info["splits"].pop("valid"))
    (root / "data" / "chunk-000" / "episode_000001.parquet").unlink()
    with pytest.raises(DatasetError, match="episode 1: data file is missing"):
        validate(root)
