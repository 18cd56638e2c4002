"""`gauntlet sweep fusion` end to end on a real local Ray Tune: table, files, failed trials marked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gauntlet.fusion import sweep as sweep_fusion
from gauntlet.fusion.anndata_io import write_h5ad
from gauntlet.fusion.methods import METHOD_NAMES
from gauntlet.runtime.config_args import parse_config


@pytest.fixture(scope="module")
def local_ray(ray_session):  # the one Ray of this test session (tests/conftest.py)
    yield ray_session


def test_defaults_and_flag_checks():
    cfg = parse_config(sweep_fusion.SweepFusionConfig, ["--out", "x"], "p", "d")
    assert cfg.seeds >= 3 and cfg.methods == METHOD_NAMES and cfg.slides == ("synthetic:3",) and 0 in cfg.refine_dims
    cfg = parse_config(sweep_fusion.SweepFusionConfig, ["--out", "x", "--methods", "concat", "staig"], "p", "d")
    assert cfg.methods == ("concat", "staig")
    with pytest.raises(SystemExit):
        parse_config(sweep_fusion.SweepFusionConfig, ["--out", "x", "--methods", "nope"], "p", "d")
    with pytest.raises(SystemExit):
        parse_config(sweep_fusion.SweepFusionConfig, ["--out", "x", "--seeds", "0"], "p", "d")


def test_missing_slide_path_stops_before_ray(tmp_path, capsys):
    assert sweep_fusion.main(["--slides", str(tmp_path / "typo.h5ad"), "--out", str(tmp_path / "o")]) == 2
    assert "typo.h5ad" in capsys.readouterr().err


def test_small_sweep_end_to_end(tmp_path, local_ray, capsys):
    # a real .h5ad without a label column: its trials must fail with the reason, the rest must run
    bad = write_h5ad(tmp_path / "unlabelled.h5ad", np.ones((30, 8)), obs={"batch": ["a"] * 30},
                     obsm={"spatial": np.random.default_rng(0).normal(size=(30, 2))})
    out = tmp_path / "sweep"
    rc = sweep_fusion.main([
        "--slides", "synthetic:1", str(bad), "--methods", "concat", "llava_mlp", "--seeds", "2",
        "--refine-dims", "0", "8", "--synthetic-spots", "150", "--synthetic-layers", "3", "--synthetic-genes", "60",
        "--difficulty", "0.1", "--epochs", "30", "--num-cpus", "2", "--out", str(out),
    ])
    assert rc == 0
    for name in ("trials", "summary", "refine_delta"):
        assert (out / f"{name}.csv").is_file()
        csv, parquet = pd.read_csv(out / f"{name}.csv"), pd.read_parquet(out / f"{name}.parquet")
        assert csv.shape == parquet.shape and list(csv.columns) == list(parquet.columns)
    assert (out / "ari_by_method.png").stat().st_size > 1000 and (out / "refine_delta.png").is_file()

    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 * 2 * 2 * 2  # methods x refine x slides x seeds
    failed = trials[trials["slide"] == "unlabelled"]
    assert (failed["status"] == "failed").all() and (failed["error_type"] == "MissingLabelsError").all()
    assert failed["reason"].str.contains("unlabelled.h5ad").all() and failed["ari_kmeans"].isna().all()
    ok = trials[trials["slide"] == "synthetic-0"]
    assert (ok["status"] == "ok").all() and (ok["ari_kmeans"] > 0.4).all()

    summary = pd.read_parquet(out / "summary.parquet")
    assert set(zip(summary["method"], summary["refine_dim"], strict=True)) == {
        ("concat", 0), ("concat", 8), ("llava_mlp", 0), ("llava_mlp", 8)
    }
    assert (summary["n_ok"] == 2).all() and (summary["n_failed"] == 2).all()
    assert summary["ari_kmeans_sd"].notna().all()
    delta = pd.read_parquet(out / "refine_delta.parquet")
    assert sorted(delta["method"]) == ["concat", "llava_mlp"] and (delta["refine_dim"] == 8).all()

    printed = capsys.readouterr().out
    assert "8/16 trials ok" in printed and "(2 FAILED)" in printed and "MissingLabelsError" in printed
    assert "16/16 trials" in printed  # unbuffered progress lines, one per finished trial


def test_report_to_tensorboard_logs_each_trial_and_the_final_tables(tmp_path, local_ray):
    from gauntlet.runtime.tracking import read_tensorboard

    out = tmp_path / "tracked"
    rc = sweep_fusion.main([
        "--slides", "synthetic:1", "--methods", "concat", "--seeds", "2", "--refine-dims", "0",
        "--synthetic-spots", "120", "--synthetic-layers", "3", "--synthetic-genes", "40", "--num-cpus", "2",
        "--report-to", "tensorboard", "--out", str(out),
    ])
    assert rc == 0
    trials = pd.read_parquet(out / "trials.parquet")
    logged = read_tensorboard(out / "tensorboard")
    scalars = logged["scalars"]
    assert [s for s, _ in scalars["trial/ari_kmeans"]] == [1, 2]
    assert sorted(v for _, v in scalars["trial/ari_kmeans"]) == pytest.approx(sorted(trials["ari_kmeans"]), rel=1e-5)
    assert sorted(v for _, v in scalars["trial/config/seed"]) == [0.0, 1.0]
    assert "ari_kmeans" in logged["texts"]["sweep/trials"][0] and "concat" in logged["texts"]["sweep/summary"][0]
