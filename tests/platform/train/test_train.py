"""`gauntlet train` on a real local Ray: Ray Train workers, checkpoints, resume, failure recovery,
the memory planner's refusal, bad inputs, and a trained adapter answering over Serve HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gauntlet.platform.train import memory_plan as mp
from gauntlet.platform.train.driver import (
    TrainConfig,
    TrainConfigError,
    main,
    preflight,
    registered_checkpoint_steps,
    run_train,
)
from gauntlet.policies.vla.config import get_config

IMAGE_SIZE = get_config("tiny").image_size  # the tiny VLA's (conftest's datasets are written at it)
MakeConfig = Callable[..., TrainConfig]  # the train_config fixture
MakeDataset = Callable[..., Path]  # the write_demo_dataset fixture


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, write_demo_dataset: MakeDataset) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("train") / "ds")


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gauntlet.policies.vla.policy import VLAPolicy

    path = tmp_path_factory.mktemp("base") / "base"
    VLAPolicy.create("tiny", seed=3).save(path)
    return path


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), "every step once, in order"
    return [r["loss"] for r in rows]


# ------------------------------------------------------------------------------ pre-flight


def test_planner_refuses_full_with_numbers_and_the_lora_command(dataset: Path, base_ckpt: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                train_config: MakeConfig) -> None:
    from gauntlet.policies.vla.config import get_config

    config = get_config("tiny")
    full = mp.breakdown(config, "full", 8)
    lora = mp.breakdown(config, "lora", 8)
    assert lora.trainable_params < full.trainable_params / 4
    assert lora.grads + lora.optimizer < (full.grads + full.optimizer) / 4
    # A device between the two needs: full cannot fit, LoRA can.
    device_gb = (full.total + lora.total) / 2 / (1 - mp.RESERVED_FRACTION) / mp.GiB
    argv = ["--dataset", str(dataset), "--out", str(tmp_path / "x"), "--base", str(base_ckpt), "--mode", "full",
            "--batch-size", "8", "--device-memory-gb", f"{device_gb:.9f}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "full fine-tuning does not fit" in err
    assert "optimizer" in err and "activations" in err and ("MiB" in err or "KiB" in err)
    assert "--mode lora" in err
    assert not (tmp_path / "x").exists(), "refused before anything was written"
    # auto picks LoRA on the same device; full fits a bigger one.
    cfg = train_config(dataset, tmp_path / "y", base=str(base_ckpt), mode="auto", device_memory_gb=device_gb)
    assert preflight(cfg).mode == "lora"
    assert preflight(train_config(dataset, tmp_path / "z", base=str(base_ckpt), mode="auto", device_memory_gb=64)).mode == "full"


def test_bad_inputs_are_refused_before_the_first_step(dataset: Path, base_ckpt: Path, tmp_path: Path,
                                                      train_config: MakeConfig, write_demo_dataset: MakeDataset) -> None:
    from gauntlet.policies.vla.policy import VLAPolicy

    six = write_demo_dataset(tmp_path / "six", action_dim=6)
    with pytest.raises(TrainConfigError, match="action_dim is 6"):
        preflight(train_config(six, tmp_path / "o1", base=str(base_ckpt)))
    nan = write_demo_dataset(tmp_path / "nan", nan_at=(1, 5), stats=False)
    with pytest.raises(TrainConfigError, match="(?i)nan"):
        preflight(train_config(nan, tmp_path / "o2", base=str(base_ckpt)))
    nostats = write_demo_dataset(tmp_path / "nostats", stats=False)
    with pytest.raises(TrainConfigError, match="gauntlet data stats"):
        preflight(train_config(nostats, tmp_path / "o3", base=str(base_ckpt)))
    with pytest.raises(TrainConfigError, match="split"):
        preflight(train_config(dataset, tmp_path / "o4", base=str(base_ckpt), split="valid"))
    with pytest.raises(TrainConfigError, match="--base"):
        preflight(train_config(dataset, tmp_path / "o5", mode="lora"))  # LoRA needs a base
    # An adapter given as --base, and a checkpoint of another model (different action head).
    base = VLAPolicy.load(base_ckpt)
    base.add_adapter("a", base.init_adapter(0))
    base.save_adapter("a", tmp_path / "adapter")
    with pytest.raises(TrainConfigError, match="adapter checkpoint"):
        preflight(train_config(dataset, tmp_path / "o6", base=str(tmp_path / "adapter")))
    VLAPolicy.create("tiny", action_dim=6).save(tmp_path / "six_base")
    with pytest.raises(TrainConfigError, match="action_dim"):
        preflight(train_config(dataset, tmp_path / "o7", base=str(tmp_path / "six_base")))


# ------------------------------------------------------------------------------ training runs


def test_resume_continues_the_same_loss_trajectory(ray_session, dataset: Path, tmp_path: Path,
                                                   train_config: MakeConfig) -> None:
    whole = run_train(train_config(dataset, tmp_path / "whole", mode="full", steps=4))
    assert whole["steps"] == 4
    first = tmp_path / "split"
    run_train(train_config(dataset, first, mode="full", steps=2))
    assert len(_losses(first)) == 2
    with pytest.raises(TrainConfigError, match="already holds a training run"):
        run_train(train_config(dataset, first, mode="full", steps=4))
    with pytest.raises(TrainConfigError, match="differs in: .*seed"):
        run_train(train_config(dataset, first, mode="full", steps=4, resume=True, seed=1))
    resumed = run_train(train_config(dataset, first, mode="full", steps=4, resume=True))
    assert resumed["steps"] == 4
    np.testing.assert_allclose(_losses(first), _losses(tmp_path / "whole"), rtol=1e-5)
    rows = [json.loads(line) for line in (first / "train" / "metrics.jsonl").read_text().splitlines()]
    assert rows[2].get("resumed") is True and not any(r.get("resumed") for r in rows[:2] + rows[3:])
    for key in ("learning_rate", "steps_per_s", "samples_per_s", "grad_norm"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert (first / "train" / "loss.png").stat().st_size > 1000
    # The artifact is a base checkpoint the policy loads, carrying the dataset's statistics.
    from gauntlet.data.normalization import NormStats
    from gauntlet.policies.vla.policy import VLAPolicy

    policy = VLAPolicy.load(first)
    assert policy.norm_stats.allclose(NormStats.load(dataset / "meta" / "stats.json"))


def test_killed_worker_recovers_from_the_latest_checkpoint(ray_session, dataset: Path, tmp_path: Path,
                                                           train_config: MakeConfig) -> None:
    out = tmp_path / "killed"
    cfg = train_config(dataset, out, mode="full", steps=30, workers=2, checkpoint_every=3, report_every=3)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(run_train(cfg)), daemon=True)
    thread.start()
    metrics, pid_file = out / "train" / "metrics.jsonl", out / "train" / "workers" / "rank1.json"
    deadline = time.monotonic() + 240
    killed_pid = None
    while time.monotonic() < deadline and thread.is_alive():
        if metrics.exists() and pid_file.exists():
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
            registered = registered_checkpoint_steps(out / "train")
            # Kill once a checkpoint is registered and the run has moved past it: the restarted
            # group must pick that checkpoint up and redo only the steps after it.
            if registered and steps and steps[-1] > registered[-1]:
                killed_pid = json.loads(pid_file.read_text())["pid"]
                os.kill(killed_pid, signal.SIGKILL)
                break
        time.sleep(0.05)
    assert killed_pid is not None, "the run ended before a worker could be killed"
    thread.join(timeout=400)
    assert not thread.is_alive()
    assert result["steps"] == 30, result
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert any(r.get("resumed") for r in rows), "the restarted group resumed from a checkpoint"
    assert json.loads(pid_file.read_text())["pid"] != killed_pid, "rank 1 is a new process"
    assert all(r["workers"] == 2 for r in rows)
    ckpts = sorted(p.name for p in (out / "train" / "ray_train").glob("checkpoint_*") if p.is_dir())
    assert len(ckpts) <= cfg.keep_checkpoints, ckpts  # keep K, orphans of the killed attempt removed


def test_lora_adapter_is_served_and_answers(ray_session, dataset: Path, base_ckpt: Path, tmp_path: Path,
                                            train_config: MakeConfig) -> None:
    import httpx
    from ray import serve

    from gauntlet.deployments.app import PolicyServing, start_serve
    from gauntlet.policies.registry import PolicyRef
    from gauntlet.policies.vla.policy import VLAPolicy

    adapters = tmp_path / "adapters"
    summary = run_train(train_config(dataset, adapters / "d1", base=str(base_ckpt), mode="lora", steps=4,
                             learning_rate=1e-2))
    assert summary["mode"] == "lora"
    assert summary["plan"]["lora"]["trainable_params"] < summary["plan"]["full"]["trainable_params"]
    # The base is untouched; the adapter loads onto it and changes its answers.
    base = VLAPolicy.load(base_ckpt)
    base.load_adapter("d1", adapters / "d1")
    port = 18523
    spec = PolicyServing(ref=PolicyRef("vla", str(base_ckpt)), max_batch_size=4, num_cpus=0.5,
                         adapters_dir=str(adapters))
    serve.shutdown()  # a Serve left running by an earlier test keeps its own HTTP port
    start_serve([spec], http_port=port, grpc_port=None)
    try:
        url = f"http://127.0.0.1:{port}/v1/policies/vla/infer"
        rng = np.random.default_rng(0)
        obs = {"observation/image": rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3)).tolist(),
               "observation/wrist_image": rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3)).tolist(),
               "observation/state": rng.normal(size=8).tolist(), "prompt": "pick up the red cube"}
        plain = httpx.post(url, json=obs, timeout=120)
        tuned = httpx.post(url + "?adapter=d1", json=obs, timeout=120)
        assert plain.status_code == 200 and tuned.status_code == 200, (plain.text, tuned.text)
        a, b = np.array(plain.json()["actions"]), np.array(tuned.json()["actions"])
        assert a.shape == b.shape == (8, 7)
        assert not np.allclose(a, b, atol=1e-4), "the trained adapter changes the policy's actions"
        batch = {k: np.asarray(v)[None] for k, v in obs.items() if k != "prompt"}
        batch["prompt"] = np.array([obs["prompt"]])
        batch["observation/image"] = batch["observation/image"].astype(np.uint8)
        batch["observation/wrist_image"] = batch["observation/wrist_image"].astype(np.uint8)
        np.testing.assert_allclose(b, base.infer(batch, adapter="d1")["actions"][0], atol=1e-4)
    finally:
        serve.shutdown()


def test_torch_policy_trains_on_torch_trainer_with_two_workers(ray_session, dataset: Path, tmp_path: Path,
                                                               train_config: MakeConfig) -> None:
    """`--policy bc_rnn`: TorchTrainer + DDP over two workers; the artifact is a BC-RNN checkpoint."""
    from gauntlet.policies.bc_rnn.policy import BCRNNPolicy

    with pytest.raises(TrainConfigError, match="bc_rnn has no adapters"):
        preflight(train_config(dataset, tmp_path / "x", policy="bc_rnn", mode="lora"))
    out = tmp_path / "bc"
    summary = run_train(train_config(dataset, out, policy="bc_rnn", mode="auto", steps=6, workers=2, checkpoint_every=3,
                             report_every=3))
    assert summary["mode"] == "full" and summary["steps"] == 6
    assert len(_losses(out)) == 6
    policy = BCRNNPolicy.load(out)
    rng = np.random.default_rng(0)
    batch = {"observation/state": rng.normal(size=(2, 8)).astype(np.float32), "episode_id": np.array(["a", "b"])}
    actions = policy.infer(batch)["actions"]
    assert actions.shape == (2, policy.config.chunk_len, 7) and np.isfinite(actions).all()


def test_report_to_tensorboard_logs_every_step_once_from_the_driver(ray_session, dataset: Path,
                                                                     tmp_path: Path, train_config: MakeConfig) -> None:
    """Two workers, reports batched every 2 steps: the driver writes each step once, in one event file."""
    from gauntlet.runtime.tracking import read_tensorboard

    out = tmp_path / "tracked"
    summary = run_train(train_config(dataset, out, policy="bc_rnn", mode="full", steps=5, workers=2, checkpoint_every=5,
                             report_every=2, report_to="tensorboard"))
    assert summary["steps"] == 5
    logdir = out / "train" / "tensorboard"
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1  # one writer, not one per worker
    logged = read_tensorboard(logdir)
    for tag in ("train/loss", "train/learning_rate", "train/steps_per_s", "train/samples_per_s", "train/grad_norm"):
        assert [step for step, _ in logged["scalars"][tag]] == [1, 2, 3, 4, 5], tag
    np.testing.assert_allclose([v for _, v in logged["scalars"]["train/loss"]], _losses(out), rtol=1e-6)
    assert '"report_to": "tensorboard"' in logged["texts"]["config"][0]
    assert "final_loss" in logged["texts"]["train/summary"][0]


@pytest.mark.slow
def test_job_log_shows_each_progress_line_once_and_none_of_ray_trains_noise(dataset: Path, tmp_path: Path) -> None:
    """`python -m gauntlet.platform.train` on its own embedded Ray, its workers' log streamed to its
    output: every progress line once (Ray Train's print patch doubled them), no per-report metrics dump,
    no PlacementGroupCleaner (which needs a dashboard and timed out into a traceback). Its own Ray: the
    test session's, after hundreds of workers, forwards a new worker's log too late for a short job."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = [sys.executable, "-m", "gauntlet.platform.train", "--dataset", str(dataset), "--out", str(tmp_path / "o"),
            "--mode", "full", "--steps", "4", "--log-every", "1", "--batch-size", "8", "--checkpoint-every", "2",
            "--report-every", "2", "--cpus-per-worker", "0.5", "--loader-workers", "1", "--decode-workers", "1",
            "--prefetch-depth", "2"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert [log.count(f"[train] step {step}/4 ") for step in range(1, 5)] == [1, 1, 1, 1], log[-3000:]
    assert "Reporting training result" not in log and "PlacementGroupCleaner" not in log, log[-3000:]


def test_ray_train_runs_without_its_placement_group_cleaner(ray_session) -> None:
    """The trainer `gauntlet train` builds leaves the cleaner out of the callbacks Ray Train would add."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from gauntlet.platform.train.driver import drop_placement_group_cleaner

    def kinds(trainer: Any) -> set[type]:
        return {type(callback) for callback in trainer._create_default_callbacks()}

    trainer = TorchTrainer(lambda: None)
    assert PlacementGroupCleanerCallback in kinds(trainer)  # Ray's default, which this Ray still has
    drop_placement_group_cleaner(trainer)
    remaining = kinds(trainer)
    assert PlacementGroupCleanerCallback not in remaining and len(remaining) > 0
