"""`gauntlet sweep train` on real components: Ray Tune with ASHA over real BC-RNN `gauntlet train` runs
(Ray Train, checkpoints, held-out validation loss), survivors scored by a real `gauntlet eval` on lift
scenes and paired with the base; a sweep driver killed mid-sweep resumes with --resume. Also the held-out
split and recovery-fraction sampling the trials use (data/sampling.py, the loader, the pre-flight)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gauntlet.data.sampling import SamplingError, recovery_weights, stratified_stride
from gauntlet.platform.cli import main as cli
from gauntlet.platform.train.config import TrainConfig, TrainConfigError

SMALL = {"hidden_size": 32, "mlp_hidden": 32}  # a BC-RNN that trains in seconds
TRAIN = "--policy bc_rnn --mode full --steps 12 --batch-size 8 --checkpoint-every 6 --report-every 3 " \
        "--log-every 100 --cpus-per-worker 0.5 --weight-decay 0"


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 scripted-expert lift D0 demos with the object state, and their statistics."""
    from gauntlet.data.collect import CollectConfig, collect_demos
    from gauntlet.data.stats import StatsConfig, write_stats

    path = tmp_path_factory.mktemp("sweep_demos") / "lift_d0"
    collect_demos(CollectConfig(out=str(path), task=("lift",), variant=("D0",), episodes=6, object_state=True,
                                horizon=300))
    write_stats(StatsConfig(dataset=str(path)), progress=False)
    return path


@pytest.fixture(scope="module")
def base(demos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh small BC-RNN reading what the demos carry: the trials' starting point."""
    from gauntlet.platform.train.recipes.bc_rnn import dataset_observations
    from gauntlet.policies.bc_rnn import BCRNNConfig, BCRNNPolicy, config_for_task

    obs = dataset_observations(str(demos))
    config = BCRNNConfig.from_dict({**config_for_task("lift", **SMALL).to_dict(), "obs_keys": list(obs),
                                    "obs_dims": list(obs.values())})
    return BCRNNPolicy.create(config, seed=0).save(tmp_path_factory.mktemp("sweep_base") / "base")


# ---------------------------------------------------------------------------------- sampling


def test_holdout_and_recovery_weights() -> None:
    nominal = np.zeros(5, bool)  # held-out episodes: spread over the split (tests/data/test_sampling.py)
    assert stratified_stride(nominal, 2).tolist() == [1, 3] and stratified_stride(nominal, 0).size == 0
    lengths, tags = np.array([10, 30, 20, 40]), np.array([False, False, True, True])
    assert np.allclose(recovery_weights(lengths, tags, None), lengths / 100)
    w = recovery_weights(lengths, tags, 0.25)
    assert np.isclose(w[tags].sum(), 0.25) and np.allclose(w[2:] / w[2:].sum(), [1 / 3, 2 / 3])
    assert recovery_weights(lengths, tags, 0.0)[tags].sum() == 0
    with pytest.raises(SamplingError, match="recovery episodes"):
        recovery_weights(lengths, np.zeros(4, bool), 0.5)


def test_preflight_refuses_what_the_split_cannot_honour(demos: Path, base: Path, tmp_path: Path) -> None:
    from gauntlet.platform.train.preflight import preflight

    common = {"dataset": str(demos), "out": str(tmp_path / "ck"), "policy": "bc_rnn", "mode": "full",
              "base": str(base), "batch_size": 8}
    with pytest.raises(TrainConfigError, match="--recovery-fraction: .* hold none"):
        preflight(TrainConfig(**common, recovery_fraction=0.5))  # the demos hold no recovery episode
    with pytest.raises(TrainConfigError, match="--val-episodes: .*nothing to train on"):
        preflight(TrainConfig(**common, val_episodes=6))
    held = preflight(TrainConfig(**common, val_episodes=2, recovery_fraction=0.0))
    full = preflight(TrainConfig(**common))
    assert held.dataset_frames < full.dataset_frames  # the held-out episodes are not trained on
    assert held.identity["val_episodes"] == 2 and "val_episodes" not in full.identity
    with pytest.raises(TrainConfigError, match="--recovery-fraction"):
        TrainConfig(**common, recovery_fraction=1.5)


def test_loader_holds_out_the_tail_and_weights_by_tag(demos: Path) -> None:
    from gauntlet.data.loader import DatasetLoader, LoaderConfig, LoaderError

    common = {"batch_size": 4, "chunk_len": 2, "cameras": (), "val_episodes": 2, "num_workers": 1,
              "prefetch_depth": 1, "decode_workers": 1}
    with DatasetLoader(demos, LoaderConfig(**common)) as train, \
            DatasetLoader(demos, LoaderConfig(**common, held_out=True)) as held:
        assert len(held.episodes) == 2
        assert set(train.episodes.tolist()).isdisjoint(held.episodes.tolist())
        assert {int(e) for b in held for e in b["episode_index"]} <= set(held.episodes.tolist())
    with pytest.raises(LoaderError, match="recovery episodes"):
        DatasetLoader(demos, LoaderConfig(**common, recovery_fraction=0.5))  # the demos are all nominal
    with DatasetLoader(demos, LoaderConfig(**common, recovery_fraction=0.0, epochs=1)) as nominal:
        assert not any(b["recovery"].any() for b in nominal)


def test_bad_sweep_flags_are_refused_before_anything_is_written(demos: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "train", "--dataset", str(demos), "--out", str(out), f"--train={TRAIN}"]
    assert cli([*args, "--knobs", "momentum=0.9"]) == 2
    assert "unknown knob 'momentum'" in capsys.readouterr().err
    assert cli([*args, "--knobs", "learning_rate=0.01", "--train=--out elsewhere"]) == 2
    assert "--out is set by the sweep" in capsys.readouterr().err
    assert cli([*args, "--knobs", "recovery_fraction=0.5"]) == 2
    assert "--knobs recovery_fraction=0.5: --recovery-fraction" in capsys.readouterr().err  # the knob's fault
    assert cli([*args, "--knobs", "learning_rate=0.01", "--resume"]) == 2
    assert "holds no sweep to continue" in capsys.readouterr().err
    # --train's own errors name --train, once, without the inner parser's usage text.
    assert cli([*args, "--knobs", "learning_rate=0.01,0.1", f"--train={TRAIN} --bogus 3"]) == 2
    err = capsys.readouterr().err
    assert "gauntlet sweep train: --train: unrecognized arguments: --bogus 3" in err and "usage:" not in err
    assert cli([*args, "--knobs", "learning_rate=0.01,0.1", f"--train={TRAIN} --batch-size 0"]) == 2
    assert "gauntlet sweep train: --train: --batch-size: must be >= 1" in capsys.readouterr().err
    assert cli([*args[:2], "--dataset", str(tmp_path / "nowhere"), *args[4:], "--knobs", "learning_rate=0.01"]) == 2
    assert "--dataset " + str(tmp_path / "nowhere") + ": no such dataset directory" in capsys.readouterr().err
    # --grace-period counts reports: 12 steps, a report every 3 steps and at the checkpoints (6, 12) = 4.
    assert cli([*args, "--knobs", "learning_rate=0.01", "--grace-period", "5"]) == 2
    assert "--grace-period 5: no trial reports that often (at most 4 reports" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # a range error is argparse's, as for any bad flag
        cli([*args, "--knobs", "learning_rate=0.01", "--concurrent", "0"])
    assert exited.value.code == 2 and "--concurrent: must be >= 1, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_report_schedule_counts_reports_and_checkpoints(demos: Path, tmp_path: Path) -> None:
    from gauntlet.platform.train.reporting import report_steps

    cfg = TrainConfig(dataset=str(demos), out=str(tmp_path / "ck"), steps=18, report_every=3, checkpoint_every=6)
    assert report_steps(cfg) == [3, 6, 9, 12, 15, 18]
    cfg = TrainConfig(dataset=str(demos), out=str(tmp_path / "ck"), steps=11, report_every=4, checkpoint_every=5)
    assert report_steps(cfg) == [4, 5, 9, 10, 11]  # a checkpoint is a report and starts the count again


@pytest.fixture(scope="module")
def scenes(generate_scenes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_scenes(tmp_path_factory.mktemp("sweep_scenes") / "scenes", variants="D0", error_types="drop",
                           workers=1)


def test_eval_scenes_that_start_training_episodes_are_refused(scenes: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from gauntlet.data.dataset_schema import EpisodeTags
    from gauntlet.data.dataset_writer import DatasetWriter
    from gauntlet.envs.scene_db import SceneDB

    scene_id = str(SceneDB.open(scenes).metadata()["scene_id"].iloc[0])
    data = tmp_path / "with_recovery"
    rng = np.random.default_rng(0)
    with DatasetWriter(data, source={"kind": "test"}) as writer:  # a recovery episode from an eval scene
        for tags in (EpisodeTags(), EpisodeTags(recovery=True, scene_id=scene_id, error_type="drop")):
            writer.add_episode(rng.normal(size=(10, 8)).astype(np.float32),
                               rng.uniform(-1, 1, size=(10, 7)).astype(np.float32), task="lift", variant="D0",
                               prompt="lift", success=True, tags=tags)
    out = tmp_path / "sweep"
    assert cli(["sweep", "train", "--dataset", str(data), "--out", str(out), f"--train={TRAIN}", "--knobs",
                "learning_rate=0.01", "--eval-scenes", str(scenes)]) == 2
    err = capsys.readouterr().err
    assert f"--eval-scenes {scenes}: 1 of its scenes start episodes of --dataset" in err and scene_id in err
    assert not out.exists()


# ------------------------------------------------------------------------------------ sweeps


@pytest.mark.slow
def test_grid_stops_the_bad_trial_and_scores_the_survivors(ray_session, demos: Path, base: Path, tmp_path: Path,
                                                          generate_scenes) -> None:
    scenes = generate_scenes(tmp_path / "scenes", variants="D0", error_types="drop,grasp_slip", workers=1)
    out = tmp_path / "sweep"
    # lr 1e-9 learns nothing: at the first rung its val_loss trails the others' and ASHA stops it.
    assert cli(["sweep", "train", "--dataset", str(demos), "--out", str(out), f"--train={TRAIN} --base {base}",
                "--knobs", "learning_rate=0.01,0.000000001", "--val-episodes", "2", "--eval-scenes", str(scenes),
                "--eval-limit", "2", "--eval-horizon", "30"]) == 0
    table = pd.read_csv(out / "trials.csv")
    assert table["trial"].tolist() == ["t000", "t001"]
    good, bad = table.iloc[0], table.iloc[1]
    assert good["status"] == "completed" and good["step"] == 12
    assert bad["status"] == "stopped" and bad["step"] < 12
    assert bad["val_loss"] > good["val_loss"]
    # The survivor was evaluated and paired with the base (the trials' training base) episode by episode.
    assert good["episodes"] == 2 and 0.0 <= good["success"] <= 1.0
    assert good["gain_ci_low"] <= good["gain"] <= good["gain_ci_high"]
    assert (out / "eval" / "base").is_dir() and (out / "eval" / "t000").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["trial"] == "t000" and summary["counts"] == {"completed": 1, "stopped": 1}
    history = [json.loads(line) for line in (out / "trials" / "t000" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 12  # every step of the survivor trained


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(demos: Path, base: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "gauntlet.platform.cli", "sweep", "train", "--dataset", str(demos), "--out",
            str(out), f"--train={TRAIN} --base {base} --steps 18", "--knobs", "learning_rate=0.01,0.003",
            "--val-episodes", "2", "--num-cpus", "3", "--grace-period", "6"]  # 6 = each trial's reports: no stopping
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own embedded Ray
    first = out / "trials" / "t000" / "train"
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 150
        while not (first / "summary.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (first / "summary.json").is_file(), "the first trial never finished"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
        proc.wait()
    assert not (out / "trials.csv").exists()
    finished_pid = json.loads((first / "workers" / "rank0.json").read_text())["pid"]
    finished_metrics = (first / "metrics.jsonl").read_text()

    # A resume with other flags would mislabel the trials: refused, naming the flag, before anything runs.
    changed = [a if a != "learning_rate=0.01,0.003" else "learning_rate=0.01,0.001" for a in args]
    refused = subprocess.run([*changed, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "differs in: --knobs)" in refused.stderr, refused.stderr[-2000:]

    resumed = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=170)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    table = pd.read_csv(out / "trials.csv")
    assert table["status"].tolist() == ["completed", "completed"]
    assert table["step"].tolist() == [18, 18]
    # Both trials' reports are counted, the finished one's included: every 3 steps, 18 steps.
    assert table["reports"].tolist() == [6, 6]
    assert (table["best_val_loss"] <= table["val_loss"]).all()
    # A fresh Tuner ran the resumed sweep: Tune's pickled state in tune/train was not loaded.
    assert (out / "tune" / "train-resume1").is_dir()
    # The finished trial was not trained again: same worker record, same metrics.
    assert json.loads((first / "workers" / "rank0.json").read_text())["pid"] == finished_pid
    assert (first / "metrics.jsonl").read_text() == finished_metrics


@pytest.mark.slow
def test_a_failed_evaluation_is_its_trials_row(ray_session, demos: Path, base: Path, scenes: Path,
                                                tmp_path: Path) -> None:
    """Two completed trials, one whose checkpoint cannot be loaded: the other is still scored, the
    failure is the broken trial's error, and the tables are written."""
    import shutil

    from gauntlet.platform.sweeps.train_sweep import SweepTrainConfig
    from gauntlet.platform.sweeps.train_sweep_report import (
        COMPLETED,
        TrialPoint,
        finish_table,
        score_survivors,
    )

    out = tmp_path / "sweep"
    config = SweepTrainConfig(dataset=str(demos), out=str(out), knobs=("learning_rate=0.01,0.1",),
                              eval_scenes=str(scenes), base=str(base), eval_limit=1, eval_horizon=10)
    points, rows = [], []
    for index, lr in enumerate((0.01, 0.1)):
        ckpt = out / "trials" / f"t{index:03d}"
        if index == 0:
            shutil.copytree(base, ckpt)
        (ckpt / "train").mkdir(parents=True)  # t001: run state only, no servable checkpoint
        (ckpt / "train" / "summary.json").write_text(json.dumps({"mode": "full"}))
        cfg = TrainConfig(dataset=str(demos), out=str(ckpt), policy="bc_rnn", mode="full", learning_rate=lr)
        points.append(TrialPoint(index, {"learning_rate": lr}, cfg))
        rows.append({"trial": f"t{index:03d}", "learning_rate": lr, "status": COMPLETED, "reports": 4, "step": 12,
                     "val_loss": 0.5, "best_val_loss": 0.5, "checkpoint": str(ckpt), "error": ""})
    scored = score_survivors(config, points, rows)
    result = finish_table(config, pd.DataFrame(rows), ["learning_rate"], scored)
    assert scored is not None and "error" not in scored and 0.0 <= scored["base_success"] <= 1.0
    table = pd.read_csv(out / "trials.csv").set_index("trial")
    assert table.loc["t000", "episodes"] == 1 and pd.isna(table.loc["t000", "error"])
    assert table.loc["t001", "error"].startswith("evaluation failed: ") and pd.isna(table.loc["t001", "success"])
    assert result["best"]["trial"] == "t000"
    assert json.loads((out / "summary.json").read_text())["best"]["trial"] == "t000"
