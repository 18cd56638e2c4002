"""The report's statistics against hand-computed and textbook values, and their degenerate cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from gauntlet.platform.report.stats import (
    cohen_kappa,
    fleiss_kappa,
    fleiss_kappa_from_labels,
    kappa_strength,
    kruskal_wallis,
    label_counts,
    wilson_interval,
)

# Fleiss (1971) as tabulated on Wikipedia's "Fleiss' kappa" page: 10 items, 14 raters, 5 categories.
FLEISS_TABLE = np.array([
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
])


def test_wilson_matches_hand_computation():
    low, high = wilson_interval(8, 10)
    # p = .8, z = 1.959964: centre (.8 + z^2/20) / (1 + z^2/10), half z sqrt(.016 + z^2/400) / (1 + z^2/10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    z = sps.norm.ppf(0.975)
    centre = (0.8 + z**2 / 20) / (1 + z**2 / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z**2 / 400) / (1 + z**2 / 10)
    assert low == pytest.approx(centre - half, abs=1e-12) and high == pytest.approx(centre + half, abs=1e-12)


def test_wilson_edges():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and 0.4 < high < 0.5  # 0/5 still has a real upper bound (0.434)
    low, high = wilson_interval(5, 5)
    assert high == 1.0 and 0.5 < low < 0.6
    narrow, wide = wilson_interval(8, 10, 0.80), wilson_interval(8, 10, 0.99)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.0)


def test_fleiss_textbook_example():
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.2099, abs=5e-4)


def test_fleiss_from_labels_matches_counts_and_drops_missing():
    labels = [["a", "a", "b"], ["b", "b", "b"], ["a", "c", "c"], ["a", None, "a"], ["c", "c", "c"]]
    counts, cats = label_counts(labels)
    assert cats == ["a", "b", "c"] and counts.shape == (4, 3)  # the row with a missing label is dropped
    assert counts.sum(axis=1).tolist() == [3, 3, 3, 3]
    assert fleiss_kappa_from_labels(labels) == pytest.approx(fleiss_kappa(counts))
    # perfect agreement with several categories in use is kappa 1
    assert fleiss_kappa_from_labels([["x"] * 3, ["y"] * 3, ["x"] * 3]) == pytest.approx(1.0)


def test_fleiss_degenerate_cases_are_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero RuntimeWarning either
        assert math.isnan(fleiss_kappa_from_labels([["none"] * 3] * 5))  # one category: P_e = 1
        assert math.isnan(fleiss_kappa(np.zeros((0, 3))))
        assert math.isnan(fleiss_kappa_from_labels([]))
        assert math.isnan(fleiss_kappa([[1, 0], [0, 1]]))  # a single rater per item
    with pytest.raises(ValueError, match="same number of ratings"):
        fleiss_kappa([[2, 1], [1, 1]])


def test_cohen_known_2x2_example():
    # Wikipedia's "Cohen's kappa" example: 50 proposals, yes/yes 20, yes/no 5, no/yes 10, no/no 15.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)  # p_o = 0.7, p_e = 0.5
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    x, y = rng.choice(["p", "q", "r"], 60), rng.choice(["p", "q", "r", "s"], 60)
    assert cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y))


def test_cohen_degenerate_and_missing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(cohen_kappa(["none"] * 4, ["none"] * 4))
        assert math.isnan(cohen_kappa([], []))
    assert cohen_kappa(["a"] * 4, ["b"] * 4) == 0.0  # disjoint single categories: p_o = p_e = 0
    assert cohen_kappa(["a", "b", None, "a"], ["a", "b", "a", ""]) == pytest.approx(1.0)  # missing pairs dropped
    with pytest.raises(ValueError, match="equally long"):
        cohen_kappa(["a"], ["a", "b"])


def test_kappa_strength_words():
    assert [kappa_strength(k) for k in (-0.1, 0.1, 0.3, 0.5, 0.7, 0.9, math.nan)] == [
        "poor", "slight", "fair", "moderate", "substantial", "almost perfect", "n/a"]


def test_kruskal_matches_scipy():
    groups = {"drop": [1, 1, 0, 1, 1, 1], "push": [0, 0, 1, 0, 0], "stall": [0.2, 0.5, 0.9, 0.4]}
    result = kruskal_wallis(groups)
    expected = sps.kruskal(*groups.values())
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert result["df"] == 2 and result["n"] == 15 and result["n_groups"] == 3 and result["note"] == ""
    assert result["epsilon_squared"] == pytest.approx(expected.statistic / 14)


def test_kruskal_perfect_separation_has_effect_one():
    result = kruskal_wallis({"a": [0, 0, 0], "b": [1, 1, 1, 1]})
    assert result["epsilon_squared"] == pytest.approx(1.0) and result["p_value"] < 0.05


def test_kruskal_degenerate_cases_do_not_raise():
    same = kruskal_wallis({"a": [0, 0, 0], "b": [0, 0], "c": np.zeros(4)})
    assert math.isnan(same["statistic"]) and same["p_value"] == 1.0 and "identical" in same["note"]
    one = kruskal_wallis({"a": [1, 0, 1], "b": [], "c": [math.nan]})
    assert math.isnan(one["statistic"]) and math.isnan(one["p_value"]) and one["n_groups"] == 1
    assert "at least 2" in one["note"] and one["df"] == 0
    assert kruskal_wallis({})["n"] == 0
