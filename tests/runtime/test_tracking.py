"""The `--report-to` trackers with their real libraries: TensorBoard event files read back with
TensorBoard's reader, a W&B run written offline (no network), and the flag on every entry point."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gauntlet.runtime.tracking import (
    REPORT_TO,
    NullTracker,
    open_tracker,
    read_tensorboard,
    wandb_mode,
)


def _exercise(tracker) -> None:
    tracker.log_scalars(1, {"x/loss": 0.5, "x/rate": np.float32(2.0), "x/name": "text", "x/nan": float("nan"),
                            "x/none": None, "x/flag": True})
    tracker.log_scalars(2, {"x/loss": 0.25})
    tracker.log_table("x/final", [{"policy": "a", "rate": np.float64(0.5)}, {"policy": "b", "rate": None}])
    tracker.close()
    tracker.close()  # idempotent: entry points close on success and again on their way out


def test_none_is_the_default_and_unknown_names_are_refused(tmp_path: Path) -> None:
    assert isinstance(open_tracker("none", tmp_path, name="n", job_type="test", config={"a": 1}), NullTracker)
    assert not any(tmp_path.iterdir())  # `none` writes nothing
    with pytest.raises(ValueError, match="--report-to must be one of"):
        open_tracker("mlflow", tmp_path, name="n", job_type="test")


def test_tensorboard_writes_scalars_config_and_tables(tmp_path: Path) -> None:
    tracker = open_tracker("tensorboard", tmp_path, name="n", job_type="test", config={"a": 1, "k": {"b": "x"}})
    _exercise(tracker)
    logged = read_tensorboard(tmp_path / "tensorboard")
    assert logged["scalars"]["x/loss"] == [(1, 0.5), (2, 0.25)]
    assert logged["scalars"]["x/rate"] == [(1, 2.0)]
    assert not {"x/name", "x/nan", "x/none", "x/flag"} & set(logged["scalars"])  # only finite numbers
    assert '"k/b": "x"' in logged["texts"]["config"][0]
    assert logged["texts"]["x/final"] == ["| policy | rate |\n|---|---|\n| a | 0.5 |\n| b | None |"]


def test_wandb_without_network_or_key_logs_offline_run_files(tmp_path: Path, monkeypatch) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no W&B settings of this machine
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))
    assert wandb_mode() == "offline"
    run_dir = tmp_path / "run"
    tracker = open_tracker("wandb", run_dir, name="n", job_type="test", config={"learning_rate": 0.001})
    assert tracker.mode == "offline"
    _exercise(tracker)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
    for key in (b"x/loss", b"x/rate", b"x/final", b"learning_rate"):
        assert key in data, key
    assert b"x/nan" not in data and b"x/name" not in data
    assert list(runs[0].glob("files/media/table/**/*.table.json"))


def test_wandb_mode_honours_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password " + "p" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"


@pytest.mark.parametrize("module, cls", [
    ("gauntlet.platform.train.config", "TrainConfig"),
    ("gauntlet.platform.eval.config", "EvalConfig"),
    ("gauntlet.fusion.sweep", "SweepFusionConfig"),
    ("gauntlet.platform.sweeps.throughput", "SweepThroughputConfig"),
])
def test_every_entry_point_takes_report_to_defaulting_to_none(module: str, cls: str) -> None:
    import importlib

    config = getattr(importlib.import_module(module), cls)
    field = next(f for f in dataclasses.fields(config) if f.name == "report_to")
    assert field.default == "none" and field.metadata["choices"] == REPORT_TO and field.metadata["help"]
