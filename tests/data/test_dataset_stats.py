"""`gauntlet data stats`: streamed statistics against NumPy on the whole concatenated arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gauntlet.data.dataset_reader import open_dataset
from gauntlet.data.dataset_writer import DatasetWriter
from gauntlet.data.normalization import FieldStats, NormStats
from gauntlet.data.stats import compute_stats
from gauntlet.platform.cli import main as cli


def _skewed_dataset(root: Path, episodes: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Awkward data on purpose: a large offset (cancellation in naive sums of squares), a heavy tail,
    a constant dimension and a binary gripper; episode lengths vary."""
    rng = np.random.default_rng(seed)
    states, actions = [], []
    with DatasetWriter(root, source={"kind": "test"}) as writer:
        for _ in range(episodes):
            n = int(rng.integers(20, 400))
            s = np.column_stack([
                1000.0 + rng.normal(0, 0.01, n),  # offset >> spread
                rng.standard_cauchy(n).clip(-50, 50),  # heavy tail
                np.full(n, 0.25),  # constant
                rng.uniform(-1, 1, (n, 3)),
                rng.exponential(0.01, (n, 2)),
            ]).astype(np.float32)
            a = np.column_stack([rng.normal(0, 0.3, (n, 6)), rng.choice([-1.0, 1.0], n, p=[0.9, 0.1])])
            a = a.astype(np.float32)
            writer.add_episode(s, a, task="lift", variant="D0", prompt="p", success=True)
            states.append(s)
            actions.append(a)
    return np.concatenate(states), np.concatenate(actions)


def _assert_moments(stats: FieldStats, x: np.ndarray) -> None:
    x = x.astype(np.float64)
    scale = np.abs(x).max(0) + 1e-12
    for name, want in (("mean", x.mean(0)), ("std", x.std(0)), ("min", x.min(0)), ("max", x.max(0))):
        got = getattr(stats, name).astype(np.float64)
        # 1e-5 relative (to the value, or to the dimension's magnitude for values near zero)
        assert np.all(np.abs(got - want) <= 1e-5 * np.maximum(np.abs(want), 1e-3 * scale)), (name, got, want)


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("stats") / "ds"
    states, actions = _skewed_dataset(root)
    return root, states, actions


def test_cli_writes_normstats_equal_to_numpy(skewed, capsys: pytest.CaptureFixture[str]) -> None:
    root, states, actions = skewed
    # Small chunks: the streaming merge runs over many chunks.
    assert cli(["data", "stats", str(root), "--chunk-frames", "1000"]) == 0
    out = capsys.readouterr().out
    assert "frames/s" in out and f"{len(states)} frames" in out
    stats = NormStats.load(root / "meta" / "stats.json")  # exactly the policies' format
    assert set(stats.fields) == {"observation/state", "actions"}
    assert open_dataset(root).load_norm_stats().allclose(stats)
    for key, x in (("observation/state", states), ("actions", actions)):
        _assert_moments(stats[key], x)
        q = np.quantile(x.astype(np.float64), [0.01, 0.99], axis=0)
        np.testing.assert_allclose(stats[key].q01, q[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(stats[key].q99, q[1], rtol=1e-6, atol=1e-6)
    # And equal to what NormStats.compute gives on the whole arrays.
    assert stats.allclose(NormStats.compute({"observation/state": states, "actions": actions}))


def test_histogram_quantiles_within_their_documented_bound(skewed) -> None:
    root, states, actions = skewed
    stats, report = compute_stats(root, exact_quantile_mb=0, histogram_bins=4096, chunk_frames=777, progress=False)
    assert report.quantile_method == "histogram" and report.passes == 2
    for key, x in (("observation/state", states), ("actions", actions)):
        x = x.astype(np.float64)
        _assert_moments(stats[key], x)  # still exact
        width = np.asarray(report.quantile_error_bound[key])
        np.testing.assert_allclose(width, (x.max(0) - x.min(0)) / 4096, rtol=1e-6)
        xs = np.sort(x, axis=0)
        for q, got in ((0.01, stats[key].q01), (0.99, stats[key].q99)):
            k = int(np.floor(q * (len(x) - 1)))
            # documented: within one bin width of the order statistic x_(k) (np.quantile lies in [x_(k), x_(k+1)])
            assert np.all(np.abs(got - xs[k]) <= width + 1e-6 * np.abs(xs[k]) + 1e-9), (key, q)
            assert np.all(np.abs(got - np.quantile(x, q, axis=0)) <= width + (xs[k + 1] - xs[k]) + 1e-6)


def test_split_only_and_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ds"
    rng = np.random.default_rng(1)
    parts = {"train": [], "valid": []}
    with DatasetWriter(root, source={"kind": "test"}) as writer:
        for i in range(6):
            split = "valid" if i % 3 == 0 else "train"
            s = rng.normal(i, 1, (50, 8)).astype(np.float32)
            writer.add_episode(s, np.zeros((50, 7)), task="lift", variant="D0", prompt="p", success=True, split=split)
            parts[split].append(s)
    out = tmp_path / "train_stats.json"
    assert cli(["data", "stats", str(root), "--split", "train", "--out", str(out)]) == 0
    train = np.concatenate(parts["train"])
    np.testing.assert_allclose(NormStats.load(out)["observation/state"].mean, train.mean(0), rtol=1e-5)
    assert not (root / "meta" / "stats.json").exists()
    assert cli(["data", "stats", str(tmp_path / "nope")]) == 1
    assert "no such dataset" in capsys.readouterr().err
