"""Training dispatch by capability: the registered recipes, the one masked chunk loss, and the
trainable policies' batch preparation (no Ray here)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gauntlet.keys import ACTION_IS_PAD_KEY, ACTIONS_KEY, STATE_KEY
from gauntlet.platform.train.recipes import RECIPES, get_recipe
from gauntlet.platform.train.worker import BACKENDS
from gauntlet.policies.base import masked_chunk_mse
from gauntlet.runtime.registry import UnknownNameError


def test_every_registered_recipe_names_itself_and_a_known_trainer() -> None:
    for name in RECIPES:
        recipe = get_recipe(name)
        assert recipe.name == name
        assert recipe.trainer in BACKENDS
    with pytest.raises(UnknownNameError, match="unknown trainable policy family 'random'; known: vla, bc_rnn"):
        get_recipe("random")


def test_listing_and_reading_recipes_imports_no_framework() -> None:
    code = ("import sys; from gauntlet.platform.train.recipes import RECIPES, get_recipe; "
            "import gauntlet.platform.train.driver; [get_recipe(n) for n in RECIPES]; "
            "print(sorted(m for m in ('jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_masked_chunk_mse_leaves_padding_out_in_every_framework() -> None:
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 4, 3)).astype(np.float32), rng.normal(size=(2, 4, 3)).astype(np.float32)
    valid = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    expected = float(np.mean(np.square(pred - target)[valid.astype(bool)]))
    assert float(masked_chunk_mse(pred, target, valid)) == pytest.approx(expected, rel=1e-6)
    assert float(masked_chunk_mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(valid))) == pytest.approx(
        expected, rel=1e-6)
    t = [torch.from_numpy(a) for a in (pred, target, valid)]
    assert float(masked_chunk_mse(*t)) == pytest.approx(expected, rel=1e-6)
    # Changing a padded prediction changes nothing; no valid position at all gives 0.
    pred2 = pred.copy()
    pred2[0, 3] += 100.0
    assert float(masked_chunk_mse(pred2, target, valid)) == pytest.approx(expected, rel=1e-6)
    assert float(masked_chunk_mse(pred, target, np.zeros_like(valid))) == 0.0
    assert float(masked_chunk_mse(pred, target)) == pytest.approx(float(np.mean(np.square(pred - target))))


def test_bc_rnn_trains_on_the_inputs_it_is_served() -> None:
    """prepare_train_batch builds exactly the LSTM inputs `infer` builds for a held observation."""
    import torch

    from gauntlet.policies.base import TrainablePolicy
    from gauntlet.policies.bc_rnn import BCRNNConfig
    from gauntlet.policies.bc_rnn.model import chunk_inputs
    from gauntlet.policies.bc_rnn.policy import BCRNNPolicy
    from gauntlet.policies.bc_rnn.windows import SequenceSampler

    config = BCRNNConfig(obs_keys=(STATE_KEY,), obs_dims=(8,), chunk_len=4, seq_len=8)
    policy = BCRNNPolicy.create(config, seed=0)
    assert isinstance(policy, TrainablePolicy)
    rng = np.random.default_rng(1)
    episodes = [{STATE_KEY: rng.normal(size=(6, 8)), ACTIONS_KEY: rng.normal(size=(6, 7))}]
    raw = SequenceSampler(episodes, config, np.random.default_rng(2)).sample(5)
    assert raw[ACTION_IS_PAD_KEY].shape == (5, 8)
    x = policy.prepare_train_batch(raw, np.random.default_rng(0))
    assert x["inputs"].shape == (5, 8, 8 + 4) and x["targets"].shape == (5, 8, 7)
    np.testing.assert_array_equal(x["valid"], (~raw[ACTION_IS_PAD_KEY]).astype(np.float32))
    normed = policy.norm_stats.normalize(STATE_KEY, raw[STATE_KEY][:, 0], config.norm_mode)
    served = chunk_inputs(torch.from_numpy(normed.astype(np.float32)), config.chunk_len).numpy()
    np.testing.assert_allclose(x["inputs"][:, :4], served, rtol=1e-6)
    loss = policy.train_loss(policy.model, {k: torch.from_numpy(v) for k, v in x.items()})
    assert loss.ndim == 0 and torch.isfinite(loss)


def _tagged_dataset(root, recovery: list[bool], splits: list[str] | None = None):
    """A small real dataset (8-wide state, 7-wide action, 6 frames an episode) with these recovery tags
    and splits, and its statistics."""
    from gauntlet.data.dataset_schema import EpisodeTags
    from gauntlet.data.dataset_writer import DatasetWriter
    from gauntlet.data.stats import StatsConfig, write_stats

    rng = np.random.default_rng(0)
    with DatasetWriter(root, source={"kind": "test"}) as writer:
        for ep, rec in enumerate(recovery):
            writer.add_episode(rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(6, 7)).astype(np.float32),
                               task="lift", variant="D0", prompt="p", success=True,
                               split=splits[ep] if splits else "train", tags=EpisodeTags(recovery=rec))
    write_stats(StatsConfig(dataset=str(root)), progress=False)
    return root


def test_held_out_episodes_come_from_the_valid_split_else_a_stratified_stride(tmp_path) -> None:
    from gauntlet.data.dataset_reader import open_dataset
    from gauntlet.platform.train.config import TrainConfig, TrainConfigError
    from gauntlet.platform.train.recipes import training_episodes

    merged = _tagged_dataset(tmp_path / "merged", [False] * 6 + [True] * 2)  # nominal, then recovery (merge)
    cfg = TrainConfig(dataset=str(merged), out=str(tmp_path / "o"), policy="bc_rnn", val_episodes=4)
    trained, held = training_episodes(cfg, open_dataset(merged))
    assert held.tolist() == [1, 3, 5, 7] and trained.tolist() == [0, 2, 4, 6]  # not the all-recovery tail
    split = ["train", "valid"] * 4
    valid = _tagged_dataset(tmp_path / "valid", [False] * 6 + [True] * 2, splits=split)
    cfg = TrainConfig(dataset=str(valid), out=str(tmp_path / "o"), policy="bc_rnn", val_episodes=2)
    trained, held = training_episodes(cfg, open_dataset(valid))
    assert trained.tolist() == [0, 2, 4, 6] and held.tolist() == [3, 7]  # the valid split's, one of each kind
    with pytest.raises(TrainConfigError, match="--val-episodes: val_episodes=5 is more than the 4 episodes"):
        training_episodes(TrainConfig(dataset=str(valid), out="o", policy="bc_rnn", val_episodes=5),
                          open_dataset(valid))


def test_preflight_checks_every_workers_share_under_a_recovery_fraction(tmp_path) -> None:
    from gauntlet.data.dataset_reader import open_dataset
    from gauntlet.platform.train.config import TrainConfig, TrainConfigError
    from gauntlet.platform.train.preflight import preflight
    from gauntlet.platform.train.recipes import worker_episodes

    common = {"out": str(tmp_path / "o"), "policy": "bc_rnn", "mode": "full", "batch_size": 4, "workers": 2,
              "recovery_fraction": 0.5}
    one = _tagged_dataset(tmp_path / "one", [False] * 5 + [True])  # the whole set holds both kinds
    with pytest.raises(TrainConfigError, match=r"--recovery-fraction: .* hold none \(worker 1's share of "
                                               r"--workers 2: 3 of the 6"):
        preflight(TrainConfig(dataset=str(one), **common))
    two = _tagged_dataset(tmp_path / "two", [False] * 4 + [True] * 2)  # every 2nd episode: rank 1 all nominal
    pre = preflight(TrainConfig(dataset=str(two), **common))
    assert pre.identity["recovery_fraction"] == 0.5
    ds, cfg = open_dataset(two), TrainConfig(dataset=str(two), **common)
    shares = [worker_episodes(cfg, ds, rank, 2) for rank in range(2)]
    assert sorted(np.concatenate([s for s, _ in shares]).tolist()) == list(range(6))
    for share, weights in shares:
        tags = ds.episodes["recovery"].to_numpy(dtype=bool)[share]
        assert np.isclose(weights[tags].sum(), 0.5) and np.isclose(weights.sum(), 1.0)
    assert "recovery_fraction" not in preflight(TrainConfig(dataset=str(two), **{**common, "recovery_fraction": None})
                                                ).identity


def test_sequence_sampler_draws_episodes_by_the_weights_it_is_built_with() -> None:
    from gauntlet.policies.bc_rnn import BCRNNConfig
    from gauntlet.policies.bc_rnn.windows import SequenceSampler

    config = BCRNNConfig(obs_keys=(STATE_KEY,), obs_dims=(8,), chunk_len=2, seq_len=4)
    episodes = [{STATE_KEY: np.full((n, 8), i, np.float32), ACTIONS_KEY: np.zeros((n, 7))}
                for i, n in enumerate((3, 9, 6))]
    drawn = SequenceSampler(episodes, config, np.random.default_rng(0), episode_weights=[0.0, 0.0, 2.0]).sample(50)
    assert (drawn[STATE_KEY] == 2).all()  # only the one weighted episode
    by_length = SequenceSampler(episodes, config, np.random.default_rng(0))
    assert np.allclose(by_length.episode_p, [3 / 18, 9 / 18, 6 / 18])
    with pytest.raises(ValueError, match="episode_weights: 2 weights for 3 episodes"):
        SequenceSampler(episodes, config, np.random.default_rng(0), episode_weights=[1.0, 1.0])
