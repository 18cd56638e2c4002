"""The VLA policy with real JAX on CPU: shapes, determinism, bucketed compilation, LoRA, checkpoints,
normalisation and the tokenizer. Models are the tiny preset cut to one layer each so that the whole
file compiles only a handful of small XLA programs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gauntlet.data.normalization import FieldStats, NormStats, NormStatsError
from gauntlet.keys import ACTIONS_KEY, IMAGE_KEY, PROMPT_KEY, STATE_KEY, WRIST_IMAGE_KEY
from gauntlet.policies.base import Policy
from gauntlet.policies.checkpoints import (
    AdapterBaseMismatchError,
    CheckpointFormatError,
    CheckpointMismatchError,
    flatten_tree,
    load_checkpoint,
    unflatten_tree,
)
from gauntlet.policies.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer
from gauntlet.policies.validation import ObservationError
from gauntlet.policies.vla.config import VLAConfig, get_config

SMALL = {"depth": 1, "expert_depth": 1}  # tiny, one layer each: compiles in about a second
MAX_B = 4


class InProcessTrainer:
    """Steps of the jitted train step `gauntlet train`'s JAX backend runs (`make_loss_step` on the
    policy's own `train_loss`), in this process: LoRA (a fresh adapter from seed 0) or full."""

    def __init__(self, policy, mode: str, learning_rate: float = 1e-3):
        from gauntlet.policies.vla.train import init_train_state, make_loss_step, make_optimizer

        optimizer = make_optimizer(learning_rate)
        self.policy = policy
        self.state = init_train_state(policy.train_weights(mode, 0), mode, optimizer)
        self._step = make_loss_step(policy.train_loss, optimizer)

    def step(self, batch, rng: int) -> None:
        self.state, _ = self._step(self.state, self.policy.prepare_train_batch(batch, rng))

    @property
    def adapter_params(self):
        return self.state.trainable["lora"]

    @property
    def trainable_param_count(self) -> int:
        from gauntlet.policies.vla.lora import count_params

        return count_params(self.state.trainable)

    def loss(self, batch, rng: int) -> float:
        return self.policy.loss({**self.state.frozen, **self.state.trainable}, batch, rng)


def make_batch(b: int, seed: int = 0, size: int = 32, state_offset: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    prompts = ["lift the red cube", "stack the cubes", "open the drawer", "pick up the can"]
    return {
        IMAGE_KEY: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8),
        WRIST_IMAGE_KEY: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8),
        STATE_KEY: (state_offset + rng.normal(size=(b, 8))).astype(np.float32),
        PROMPT_KEY: np.array([prompts[i % len(prompts)] for i in range(b)]),
    }


def take(batch: dict[str, np.ndarray], idx: slice | list[int]) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in batch.items()}


@pytest.fixture(scope="module")
def vla():
    from gauntlet.policies.vla import VLAPolicy

    return VLAPolicy.create("tiny", seed=0, max_batch_size=MAX_B, **SMALL)


@pytest.fixture(scope="module")
def trained(vla):
    """A LoRA adapter trained for a few steps, plus the losses and base snapshot around it."""
    batch = make_batch(4, seed=7)
    batch[ACTIONS_KEY] = np.random.default_rng(8).uniform(-1, 1, (4, 8, 7)).astype(np.float32)
    base_before = {k: np.array(v) for k, v in flatten_tree(vla.params).items()}
    trainer = InProcessTrainer(vla, "lora", learning_rate=3e-3)
    adapter_before = {k: np.array(v) for k, v in flatten_tree(trainer.adapter_params).items()}
    loss_before = trainer.loss(batch, rng=123)
    for step in range(25):
        trainer.step(batch, rng=step)
    loss_after = trainer.loss(batch, rng=123)
    return {"trainer": trainer, "batch": batch, "base_before": base_before, "adapter_before": adapter_before,
            "loss_before": loss_before, "loss_after": loss_after}


# ------------------------------------------------------------------------------------ light pieces


def test_policy_modules_do_not_import_jax():
    code = ("import sys, gauntlet.policies, gauntlet.data.normalization, gauntlet.policies.checkpoints, "
            "gauntlet.policies.tokenizer, gauntlet.policies.vla, gauntlet.policies.vla.config; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tokenizer_is_deterministic_normalised_and_truncating():
    tok = ByteTokenizer(max_len=16)
    ids, mask = tok.encode("Lift  the_Cube ")
    ids2, mask2 = tok.encode("lift the cube")
    assert ids.dtype == np.int32 and ids.shape == (16,)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(mask, mask2)
    assert ids[0] == BOS_ID and ids[mask.sum() - 1] == EOS_ID and ids[mask.sum()] == PAD_ID
    assert tok.decode(ids) == "lift the cube"
    long_ids, long_mask = tok.encode("x" * 100)
    assert long_mask.all() and long_ids[-1] == EOS_ID
    batch_ids, batch_mask = tok.encode_batch(np.array(["a", "héllo"]))
    assert batch_ids.shape == (2, 16) and batch_mask.sum(1).tolist() == [3, 8]
    assert tok.decode(batch_ids[1]) == "héllo"
    # Same ids in a fresh process: nothing depends on hash seeds or global state.
    out = subprocess.run(
        [sys.executable, "-c", "from gauntlet.policies.tokenizer import ByteTokenizer;"
         "print(ByteTokenizer(16).encode('lift the cube')[0].tolist())"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert json.loads(out) == ids.tolist()


def test_config_presets_and_validation():
    assert get_config("tiny").width == 64 and get_config("base").image_size == 224
    assert get_config("tiny", num_cameras=1).num_cameras == 1
    with pytest.raises(ValueError, match="image_size"):
        VLAConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="num_cameras"):
        VLAConfig(num_cameras=3)
    with pytest.raises(ValueError, match="config_name"):
        get_config("huge")
    with pytest.raises(ValueError, match="bogus"):
        VLAConfig.from_dict({**VLAConfig().to_dict(), "bogus": 1})
    assert VLAConfig.from_dict(get_config("small").to_dict()) == get_config("small")


def test_norm_stats_round_trip_and_modes(tmp_path: Path):
    rng = np.random.default_rng(0)
    state = rng.normal(100.0, 5.0, (500, 8))
    state[:, 7] = 0.04  # a constant gripper dimension must stay finite
    stats = NormStats.compute({STATE_KEY: state, ACTIONS_KEY: rng.normal(size=(500, 8, 7))})
    assert stats[ACTIONS_KEY].dim == 7 and abs(stats[STATE_KEY].mean[0] - 100) < 1
    for mode in ("zscore", "quantile"):
        normed = stats.normalize(STATE_KEY, state, mode)
        assert np.all(np.isfinite(normed)) and np.abs(normed[:, :7]).mean() < 1.5
        np.testing.assert_allclose(stats.unnormalize(STATE_KEY, normed, mode), state, rtol=1e-5, atol=1e-4)
        # A constant dimension is shifted, not divided by ~0: a small deviation stays small.
        nearby = stats.normalize(STATE_KEY, state[:1] + np.r_[np.zeros(7), 0.01], mode)
        assert abs(nearby[0, 7] - stats.normalize(STATE_KEY, state[:1], mode)[0, 7]) < 0.02
    path = stats.save(tmp_path / "norm_stats.json")
    assert NormStats.load(path).allclose(stats)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(NormStatsError, match="bad.json"):
        NormStats.load(tmp_path / "bad.json")
    with pytest.raises(NormStatsError, match="NaN"):
        FieldStats.compute(np.array([[np.nan, 1.0]]))


def test_tree_flatten_round_trip():
    tree = {"a": {"b": np.ones((2, 3)), "c": {"d": np.zeros(4)}}, "e": np.arange(3)}
    flat = flatten_tree(tree)
    assert sorted(flat) == ["a/b", "a/c/d", "e"]
    back = unflatten_tree(flat)
    np.testing.assert_array_equal(back["a"]["c"]["d"], tree["a"]["c"]["d"])


def test_param_counts_lora_vs_full():
    from gauntlet.policies.vla.lora import param_counts

    tiny = param_counts(get_config("tiny"))
    assert 0 < tiny["lora"] < tiny["full"]
    assert param_counts(get_config("tiny", lora_rank=4))["lora"] * 2 == tiny["lora"]


# ------------------------------------------------------------------------------------ inference


def test_infer_shapes_dtype_and_metadata(vla):
    out = vla.infer(make_batch(3))
    assert out["actions"].shape == (3, 8, 7) and out["actions"].dtype == np.float32
    assert np.all(np.isfinite(out["actions"]))
    assert out["policy_timing"]["batch_size"] == 3 and out["policy_timing"]["buckets"] == [4]
    assert isinstance(vla, Policy)
    m = vla.metadata
    assert (m.action_dim, m.chunk_len, m.needs_images) == (7, 8, True)
    assert m.observation_spec[IMAGE_KEY].shape == (32, 32, 3) and m.observation_spec[WRIST_IMAGE_KEY].dtype == "uint8"
    assert m.observation_spec[STATE_KEY].shape == (8,)
    json.dumps(m.to_dict())  # the metadata endpoint serves it as JSON


def test_bad_inputs_name_the_field(vla):
    with pytest.raises(ObservationError, match=IMAGE_KEY):
        vla.infer(make_batch(1, size=64))
    batch = make_batch(2)
    del batch[WRIST_IMAGE_KEY]
    with pytest.raises(ObservationError, match=WRIST_IMAGE_KEY):
        vla.infer(batch)
    batch = make_batch(2)
    batch[STATE_KEY] = batch[STATE_KEY][:, :5]
    with pytest.raises(ObservationError, match=STATE_KEY):
        vla.infer(batch)


def test_inference_is_deterministic_per_seed(vla):
    batch = make_batch(2)
    a = vla.infer(batch)["actions"]
    np.testing.assert_array_equal(a, vla.infer(batch)["actions"])
    assert not np.allclose(a, vla.infer(batch, seed=1)["actions"])
    varied = vla.infer({**batch, "noise_seed": np.array([0, 5])})["actions"]
    np.testing.assert_array_equal(varied[0], a[0])
    assert not np.allclose(varied[1], a[1])
    # The prompt matters: the trunk attends to the instruction tokens.
    assert not np.allclose(a, vla.infer({**batch, PROMPT_KEY: np.array(["x", "y"])})["actions"])


def test_bucket_padding_gives_the_same_per_sample_actions(vla):
    batch = make_batch(6, seed=3)  # 6 > max_batch_size: runs as 4 + 2
    together = vla.infer(batch)
    assert together["policy_timing"]["buckets"] == [4, 2]
    alone = np.concatenate([vla.infer(take(batch, [i]))["actions"] for i in range(6)])
    np.testing.assert_allclose(together["actions"], alone, atol=1e-5)
    three = vla.infer(take(batch, slice(0, 3)))["actions"]  # padded to bucket 4
    np.testing.assert_allclose(three, alone[:3], atol=1e-5)


def test_warmup_compiles_every_bucket_and_serving_adds_none(vla):
    vla.warmup(MAX_B)
    assert vla.compiled_buckets == (1, 2, 4)
    count = vla.compile_count
    for b in range(1, MAX_B + 1):
        assert vla.infer(make_batch(b, seed=b))["actions"].shape == (b, 8, 7)
    vla.infer(make_batch(2 * MAX_B + 1))
    assert vla.compile_count == count
    assert vla.metadata.extra["buckets"] == [1, 2, 4]


# ------------------------------------------------------------------------------------ LoRA


def test_zero_initialised_adapter_leaves_outputs_unchanged(vla):
    vla.add_adapter("zero", vla.init_adapter(seed=1))
    assert "zero" in vla.adapters and "zero" in vla.metadata.extra["adapters"]
    count = vla.compile_count
    batch = make_batch(3, seed=4)
    np.testing.assert_allclose(vla.infer(batch, adapter="zero")["actions"], vla.infer(batch)["actions"], atol=1e-6)
    # Loaded after warmup: its buckets were compiled when it was added, not on a request.
    assert vla.compile_count == count
    view = vla.with_adapter("zero")
    assert isinstance(view, Policy) and view.metadata.name == "vla:zero"
    np.testing.assert_array_equal(view.infer(batch)["actions"], vla.infer(batch, adapter="zero")["actions"])
    from gauntlet.policies.vla import AdapterNotFoundError

    with pytest.raises(AdapterNotFoundError, match="nope"):
        vla.infer(batch, adapter="nope")


def test_lora_training_changes_only_the_adapter_and_reduces_loss(vla, trained):
    from gauntlet.policies.vla.lora import param_counts

    trainer = trained["trainer"]
    assert trained["loss_after"] < 0.8 * trained["loss_before"], (trained["loss_before"], trained["loss_after"])
    for key, value in flatten_tree(trainer.state.frozen["params"]).items():
        np.testing.assert_array_equal(np.asarray(value), trained["base_before"][key], err_msg=key)
    for key, value in flatten_tree(vla.params).items():
        np.testing.assert_array_equal(np.asarray(value), trained["base_before"][key], err_msg=key)
    after = flatten_tree(trainer.adapter_params)
    assert any(not np.array_equal(after[k], trained["adapter_before"][k]) for k in after)
    counts = param_counts(vla.config)
    assert trainer.trainable_param_count == counts["lora"] < counts["full"]
    assert InProcessTrainer(vla, "full").trainable_param_count == counts["full"]


def test_merge_unmerge_round_trip_and_merged_model_matches(vla, trained):
    from gauntlet.policies.vla.lora import merge, unmerge

    adapter = trained["trainer"].adapter_params
    alpha = vla.config.lora_alpha
    merged = merge(vla.params, adapter, alpha)
    base_flat, merged_flat = flatten_tree(vla.params), flatten_tree(merged)
    assert any(not np.allclose(merged_flat[k], base_flat[k]) for k in base_flat)
    restored = flatten_tree(unmerge(merged, adapter, alpha))
    for key in base_flat:
        np.testing.assert_allclose(restored[key], base_flat[key], atol=1e-6, err_msg=key)
    batch = trained["batch"]
    unmerged_loss = vla.loss({"params": vla.params, "lora": adapter}, batch, rng=5)
    merged_loss = vla.loss({"params": merged}, batch, rng=5)
    assert merged_loss == pytest.approx(unmerged_loss, rel=1e-4)


# ------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_with_raw_scale_normalisation(vla, tmp_path: Path):
    from gauntlet.policies.vla import VLAPolicy

    # Stats centred on 100: clients send raw states near 100 and get raw actions near 100.
    offset = np.full(8, 100.0)
    stats = NormStats({
        STATE_KEY: FieldStats(mean=offset, std=np.ones(8), min=offset - 3, max=offset + 3, q01=offset - 2, q99=offset + 2),
        ACTIONS_KEY: FieldStats(mean=np.full(7, 100.0), std=np.full(7, 2.0), min=np.full(7, 90.0),
                                max=np.full(7, 110.0), q01=np.full(7, 98.0), q99=np.full(7, 102.0)),
    })
    shifted = VLAPolicy(vla.config, vla.params, stats, max_batch_size=MAX_B)
    raw = make_batch(2, seed=9, state_offset=100.0)
    raw_actions = shifted.infer(raw)["actions"]
    assert np.all(np.abs(raw_actions - 100.0) < 20.0), raw_actions
    # Equivalent to the identity-stats policy fed the normalised state, its actions unnormalised.
    normed = {**raw, STATE_KEY: stats.normalize(STATE_KEY, raw[STATE_KEY], "quantile")}
    expected = stats.unnormalize(ACTIONS_KEY, vla.infer(normed)["actions"], "quantile")
    np.testing.assert_allclose(raw_actions, expected, rtol=1e-5, atol=1e-4)

    ckpt = shifted.save(tmp_path / "base")
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "norm_stats.json", "params.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temp dirs left behind
    shifted.save(tmp_path / "base")  # overwrite is atomic too
    loaded = VLAPolicy.load(ckpt, max_batch_size=MAX_B)
    assert loaded.base_fingerprint == shifted.base_fingerprint
    assert loaded.norm_stats.allclose(stats)
    np.testing.assert_array_equal(loaded.infer(raw)["actions"], raw_actions)


def test_adapter_saved_separately_and_reloaded_onto_the_base(vla, trained, tmp_path: Path):
    from gauntlet.policies.vla import VLAPolicy

    vla.add_adapter("ft", trained["trainer"].adapter_params)
    base_dir = vla.save(tmp_path / "base")
    adapter_dir = vla.save_adapter("ft", tmp_path / "ft")
    manifest = json.loads((adapter_dir / "config.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["base_fingerprint"] == vla.base_fingerprint
    assert (adapter_dir / "params.npz").stat().st_size < (base_dir / "params.npz").stat().st_size / 2
    assert not any("kernel" in k for k in np.load(adapter_dir / "params.npz", allow_pickle=False).files)

    batch = make_batch(2, seed=11)
    expected = vla.infer(batch, adapter="ft")["actions"]
    assert not np.allclose(expected, vla.infer(batch)["actions"], atol=1e-4)
    served = VLAPolicy.load(base_dir, max_batch_size=MAX_B)
    served.load_adapter("ft", adapter_dir)
    served.load_adapter("ft2", adapter_dir)  # two adapters, one base in memory
    assert served.adapters == ("ft", "ft2")
    np.testing.assert_allclose(served.infer(batch, adapter="ft")["actions"], expected, atol=1e-6)

    other_base = VLAPolicy.create("tiny", seed=1, max_batch_size=MAX_B, **SMALL)
    with pytest.raises(AdapterBaseMismatchError, match="config.json"):
        other_base.load_adapter("ft", adapter_dir)
    wider = VLAPolicy.create("tiny", seed=0, max_batch_size=MAX_B, **{**SMALL, "width": 32})
    with pytest.raises(CheckpointMismatchError, match="width"):
        wider.load_adapter("ft", adapter_dir)
    with pytest.raises(CheckpointMismatchError, match="adapter"):
        VLAPolicy.load(adapter_dir)


def test_corrupt_or_missing_files_are_named(vla, tmp_path: Path):
    from gauntlet.policies.vla import VLAPolicy

    good = vla.save(tmp_path / "good")

    def broken(name: str) -> Path:
        import shutil

        dst = tmp_path / name
        shutil.copytree(good, dst)
        return dst

    truncated = broken("truncated")
    data = (truncated / "params.npz").read_bytes()
    (truncated / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match=r"truncated/params\.npz"):
        VLAPolicy.load(truncated)

    flipped = broken("flipped")
    raw = bytearray((flipped / "params.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (flipped / "params.npz").write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match=r"flipped/params\.npz"):
        VLAPolicy.load(flipped)

    no_stats = broken("no_stats")
    (no_stats / "norm_stats.json").unlink()
    with pytest.raises(CheckpointFormatError, match=r"no_stats/norm_stats\.json"):
        VLAPolicy.load(no_stats)

    no_config = broken("no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(CheckpointFormatError, match=r"no_config/config\.json"):
        VLAPolicy.load(no_config)

    future = broken("future")
    manifest = json.loads((future / "config.json").read_text())
    (future / "config.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CheckpointFormatError, match="format_version"):
        VLAPolicy.load(future)

    edited = broken("edited")  # same shapes, different function: only the fingerprint catches it
    manifest["model_config"]["num_heads"] = 2
    (edited / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointFormatError, match="fingerprint"):
        VLAPolicy.load(edited)

    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_checkpoint(good, expected_shapes={**{"extra/kernel": (1,)}})
    with pytest.raises(CheckpointFormatError, match="not found"):
        VLAPolicy.load(tmp_path / "nowhere")
