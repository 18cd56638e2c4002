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
