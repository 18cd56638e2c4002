"""The closed loop across projects: demos collected with Gauntlet, exported to LeRobot v3.0, a small ACT
trained for a few steps by LeRobot's own code on the CPU, saved in lerobot-train's checkpoint layout,
and evaluated on Gauntlet's scenes with `gauntlet eval --policy lerobot=<pretrained_model>`.

It proves a LeRobot user can evaluate on Gauntlet's scenes what they trained with their own tools.
LeRobot pins its own dependencies and never enters Gauntlet's environment: training runs in a Ray task on the
test session's Ray with the runtime_env Gauntlet's LeRobot replicas use (the same install spec, so Ray
builds that virtualenv once per session for this module, the export tests and the serving tests).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

pytestmark = pytest.mark.slow

IMAGE_SIZE = 32  # px: the smallest ResNet-friendly size that keeps rendering and training fast on a CPU
EPISODES = 2
TRAIN_STEPS = 8
BATCH_SIZE = 8
SCENE_LIMIT = 2
REPO_ID = "gauntlet/closed-loop"  # LeRobot needs a repo_id; with root= and offline it is only a label
# ACT's architecture at CPU-test sizes (gauntlet.policies.lerobot.untrained_checkpoints's cut-down shapes), with the
# chunk lerobot-train would use for a 10-step plan. The learning rate is raised from ACT's 1e-5 so that
# a handful of steps measurably moves the loss.
ACT_OVERRIDES: dict[str, Any] = {"n_action_steps": 10, "optimizer_lr": 1e-3, "optimizer_lr_backbone": 1e-3}


def _lerobot_runtime_env(tmp: Path) -> dict[str, Any]:
    """The LeRobot replicas' runtime_env, offline, with HF caches under `tmp` (as the export tests do)."""
    from gauntlet.policies.lerobot.environment import runtime_env

    env = runtime_env()
    env["env_vars"] = {**env["env_vars"], "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "HF_HOME": str(tmp / "hf_home"), "HF_DATASETS_CACHE": str(tmp / "hf_datasets"),
                       # The session's Serve gRPC bind hook imports ray.serve, which the LeRobot venv's
                       # protobuf breaks; this task starts no Serve proxy, so it skips the hook.
                       WORKER_PROCESS_SETUP_HOOK_ENV_VAR: ""}
    return env


def _train_act_with_lerobot(root: str, out_dir: str, steps: int, batch_size: int,
                            overrides: dict[str, Any]) -> dict[str, Any]:
    """Runs inside the LeRobot environment: what `lerobot-train --policy.type=act` does, step for step
    (dataset with the policy's delta_timestamps, make_policy from the dataset's features, processors
    from the dataset's stats, forward loss + AdamW preset + grad clipping), then lerobot-train's
    `pretrained_model` layout. Returns the losses seen."""
    import torch
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from gauntlet.policies.lerobot.untrained_checkpoints import SMALL_OVERRIDES

    torch.manual_seed(0)
    meta = LeRobotDatasetMetadata(REPO_ID, root=root)
    cfg = ACTConfig(device="cpu", **{**SMALL_OVERRIDES["act"], **overrides})
    dataset = LeRobotDataset(REPO_ID, root=root, delta_timestamps=resolve_delta_timestamps(cfg, meta))
    # make_policy derives input/output features from the dataset (dataset_to_policy_features), as
    # lerobot-train does: nothing here names Gauntlet's shapes.
    policy = make_policy(cfg, ds_meta=dataset.meta)
    pre, post = make_pre_post_processors(cfg, dataset_stats=dataset.meta.stats)
    optimizer = cfg.get_optimizer_preset().build(policy.get_optim_params())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    probe = pre(next(iter(loader)))

    def probe_loss() -> float:
        # ACT's loss needs train mode (the VAE encoder runs only then); the same seed fixes dropout and
        # the latent sample, so before/after differ only by the weights.
        policy.train()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(1234)
            return float(policy.forward(probe)[0])

    before = probe_loss()
    losses: list[float] = []
    batches = iter(loader)
    for _ in range(steps):
        try:
            batch = next(batches)
        except StopIteration:  # a tiny dataset: start another epoch, as lerobot-train's cycle() does
            batches = iter(loader)
            batch = next(batches)
        policy.train()
        loss, _ = policy.forward(pre(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.get_optimizer_preset().grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    after = probe_loss()
    # lerobot-train's checkpoints/<step>/pretrained_model: policy, then both processor pipelines.
    policy.save_pretrained(out_dir)
    pre.save_pretrained(out_dir)
    post.save_pretrained(out_dir)
    return {"losses": losses, "before": before, "after": after, "frames": dataset.num_frames,
            "input_features": sorted(cfg.input_features), "cameras": list(dataset.meta.camera_keys)}


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Collect -> export -> LeRobot training; returns the training report and the pretrained_model dir."""
    from gauntlet.platform.cli import main as cli

    tmp = tmp_path_factory.mktemp("lerobot_closed_loop")
    demos, exported = tmp / "demos", tmp / "lerobot"
    assert cli(["data", "collect", "--task", "lift", "--variant", "D0", "--episodes", str(EPISODES),
                "--out", str(demos), "--cameras", "--image-size", str(IMAGE_SIZE)]) == 0
    assert cli(["data", "export-lerobot", str(demos), "--out", str(exported)]) == 0
    pretrained = tmp / "train" / "checkpoints" / "last" / "pretrained_model"
    # Ray's workers cannot import this test module: ship its functions by value.
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    task = ray_session.remote(_train_act_with_lerobot).options(runtime_env=_lerobot_runtime_env(tmp), num_cpus=1)
    report = ray_session.get(task.remote(str(exported), str(pretrained), TRAIN_STEPS, BATCH_SIZE, ACT_OVERRIDES),
                             timeout=1800)
    return {**report, "pretrained": pretrained, "tmp": tmp}


def test_lerobot_trains_on_the_export_and_gauntlet_evaluates_it(trained: dict[str, Any]) -> None:
    from gauntlet.envs.scene_db import SceneDB
    from gauntlet.platform.cli import main as cli
    from gauntlet.platform.eval.results import ResultsStore

    # LeRobot trained on Gauntlet's features as they were exported (both cameras, the 8-d state).
    assert trained["input_features"] == ["observation.images.agentview", "observation.images.wrist",
                                         "observation.state"]
    losses = trained["losses"]
    assert len(losses) == TRAIN_STEPS and all(math.isfinite(x) for x in losses)
    assert math.isfinite(trained["before"]) and trained["after"] < trained["before"], trained
    pretrained: Path = trained["pretrained"]
    assert {"config.json", "model.safetensors", "policy_preprocessor.json",
            "policy_postprocessor.json"} <= {p.name for p in pretrained.iterdir()}

    tmp: Path = trained["tmp"]
    scenes, run = tmp / "scenes", tmp / "run"
    assert cli(["scenes", "generate", "--out", str(scenes), "--tasks", "lift", "--variants", "D0",
                "--error-types", "object_push", "--workers", "1", "--no-validate"]) == 0
    # The camera names LeRobot trained on (agentview, wrist) are the adapter's defaults: no mapping.
    assert cli(["eval", "--scenes", str(scenes), "--policy", f"lerobot={pretrained}", "--out", str(run),
                "--actors", "1", "--horizon", "20", "--limit", str(SCENE_LIMIT), "--max-batch-size", "4"]) == 0

    expected = sorted(SceneDB.open(str(scenes)).metadata()["scene_id"])[:SCENE_LIMIT]
    frame = ResultsStore(run).read()
    assert sorted(zip(frame["scene_id"], frame["policy"], frame["trial"], strict=True)) == \
        [(scene, "lerobot", 0) for scene in expected]
    assert frame["run_id"].nunique() == 1
    assert not frame["skipped"].any()
    assert (frame["inference_calls"] > 0).all()
