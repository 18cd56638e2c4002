"""Small, guarded statistics for evaluation reports: Wilson intervals (and the rate differences
built from them, independent and paired), McNemar's exact test, kappas, Kruskal-Wallis.

Everything here takes plain NumPy-compatible inputs and returns floats or plain dicts, so reports,
notebooks and tests can use it without pandas. Degenerate inputs (no data, a single category, all
values equal) are normal in small evaluation runs; they yield NaN (or p = 1.0) with a documented
rule instead of a ZeroDivisionError, a RuntimeWarning or a SciPy exception, because one odd cell
must never take down a whole report.

Rules for degenerate cases:

- `wilson_interval`: n = 0 -> (nan, nan): no episodes, no estimate; `rate_difference_interval`
  likewise when either side has n = 0.
- `paired_difference_interval`: no pairs -> (nan, nan, nan); `mcnemar_exact`: no discordant pair ->
  p = 1.0 (nothing contradicts "no difference").
- `fleiss_kappa` / `cohen_kappa`: no items, fewer than two raters, or chance agreement P_e = 1
  (every rating falls in one single category) -> nan. Kappa is agreement *beyond chance*; when
  chance alone already explains perfect agreement there is nothing beyond it to measure, and
  reporting 1.0 would claim the raters discriminate when they were never put to the test.
- `kruskal_wallis`: fewer than two non-empty groups -> statistic/p/effect nan (the question cannot
  be asked); all values identical across groups -> statistic nan, p_value 1.0, effect nan (no rank
  differences at all, so no evidence that the groups differ). `note` says which rule applied.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# Chance agreement this close to 1 counts as exactly 1 (all ratings in one category): the
# denominator 1 - P_e would otherwise be rounding noise.
_DEGENERATE_EPS = 1e-12


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion `successes / n`.

    Chosen over the normal (Wald) interval because evaluation cells are small and rates are often 0
    or 1, where Wald collapses to a zero-width interval; Wilson stays inside [0, 1] and keeps
    sensible coverage. n = 0 -> (nan, nan).
    """
    from scipy.stats import norm

    successes, n = int(successes), int(n)
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return (math.nan, math.nan)
    z = float(norm.ppf(1.0 - (1.0 - confidence) / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    # At p = 0 (p = 1) the lower (upper) bound is analytically 0 (1); set it exactly so that rounding
    # never puts a bound on the wrong side of the rate (matplotlib rejects negative error bars).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def rate_difference_interval(successes_a: int, n_a: int, successes_b: int, n_b: int,
                             confidence: float = 0.95) -> tuple[float, float, float]:
    """(difference, low, high) of the rate difference a - b, Newcombe's hybrid score interval.

    Built from each rate's own Wilson interval (Newcombe 1998, method 10), so it inherits their
    good behaviour at small n and rates of 0 or 1, where a Wald interval of the difference collapses;
    it stays inside [-1, 1]. Either n = 0 -> (nan, nan, nan): a missing rate has no difference.
    """
    if n_a == 0 or n_b == 0:
        return (math.nan, math.nan, math.nan)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    low_a, high_a = wilson_interval(successes_a, n_a, confidence)
    low_b, high_b = wilson_interval(successes_b, n_b, confidence)
    diff = p_a - p_b
    low = diff - math.sqrt((p_a - low_a) ** 2 + (high_b - p_b) ** 2)
    high = diff + math.sqrt((high_a - p_a) ** 2 + (p_b - low_b) ** 2)
    return (diff, max(-1.0, low), min(1.0, high))


def paired_difference_interval(a_only: int, b_only: int, both: int, neither: int,
                               confidence: float = 0.95) -> tuple[float, float, float]:
    """(difference, low, high) of success rate A - B over paired episodes, Newcombe's hybrid score
    interval for paired proportions (Newcombe 1998, "Improved confidence intervals for the difference
    between binomial proportions based on paired data", Statistics in Medicine 17:2635, method 10).

    Counts: `a_only` pairs where only A succeeded, `b_only` only B, `both`, `neither`. Each marginal
    rate gets its Wilson interval (l1, u1 for A; l2, u2 for B), and the two are combined with the
    correlation of the pairs, phi = (both * neither - a_only * b_only) / sqrt(product of the four
    margins) (0 when a margin is empty):
        low  = d - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
        high = d + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)
    Positively correlated outcomes (the same scenes are hard for both) narrow it; phi = 0 gives the
    independent-samples interval. No pairs -> (nan, nan, nan).
    """
    counts = [int(a_only), int(b_only), int(both), int(neither)]
    if min(counts) < 0:
        raise ValueError(f"paired_difference_interval needs counts >= 0, got {counts}")
    n = sum(counts)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    successes_a, successes_b = both + a_only, both + b_only
    p1, p2 = successes_a / n, successes_b / n
    l1, u1 = wilson_interval(successes_a, n, confidence)
    l2, u2 = wilson_interval(successes_b, n, confidence)
    margins = successes_a * (n - successes_a) * successes_b * (n - successes_b)
    phi = (both * neither - a_only * b_only) / math.sqrt(margins) if margins else 0.0
    diff = p1 - p2
    # max(0, .): the radicand is a sum of squares minus a correlation term, never negative but for rounding.
    low = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (diff, max(-1.0, low), min(1.0, high))


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided p of McNemar's exact test: under "A and B succeed equally often", each discordant
    pair is A's with probability 1/2, so the smaller discordant count is binomial(a_only + b_only, 1/2);
    p = min(1, 2 * P(X <= min count)). No discordant pair -> 1.0."""
    from scipy.stats import binom

    a_only, b_only = int(a_only), int(b_only)
    if a_only < 0 or b_only < 0:
        raise ValueError(f"mcnemar_exact needs counts >= 0, got {a_only}, {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * float(binom.cdf(min(a_only, b_only), n, 0.5)))


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value == ""


def label_counts(
    labels: Sequence[Sequence[Any]] | np.ndarray, categories: Sequence[Any] | None = None
) -> tuple[np.ndarray, list[Any]]:
    """(N items x R raters) label matrix -> ((N' x k) count matrix, the k categories).

    Items with any missing label (None, NaN, "") are dropped, because Fleiss' kappa needs the same
    number of ratings per item. Categories default to the sorted labels that occur.
    """
    rows = [list(r) for r in (labels.tolist() if isinstance(labels, np.ndarray) else labels)]
    rows = [r for r in rows if r and not any(_is_missing(v) for v in r)]
    if categories is None:
        categories = sorted({v for r in rows for v in r}, key=str)
    cats = list(categories)
    index = {c: j for j, c in enumerate(cats)}
    counts = np.zeros((len(rows), len(cats)), dtype=np.int64)
    for i, r in enumerate(rows):
        for v in r:
            if v not in index:
                raise ValueError(f"label {v!r} is not one of the categories {cats}")
            counts[i, index[v]] += 1
    return counts, cats


def fleiss_kappa(ratings: np.ndarray | Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an (N items x k categories) matrix of rating counts.

    Every row must sum to the same number of raters n (raises ValueError otherwise: that is a
    malformed table, not a degenerate one). No items, n < 2, or all ratings in one category -> nan
    (see the module docstring).
    """
    counts = np.asarray(ratings, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"fleiss_kappa needs an (items x categories) matrix, got shape {counts.shape}")
    if counts.shape[0] == 0 or counts.shape[1] == 0:
        return math.nan
    if (counts < 0).any():
        raise ValueError("fleiss_kappa: rating counts must be non-negative")
    per_item = counts.sum(axis=1)
    n = float(per_item[0])
    if not np.allclose(per_item, n):
        raise ValueError(
            f"fleiss_kappa: every item needs the same number of ratings, got {sorted(set(per_item.tolist()))}"
        )
    if n < 2:
        return math.nan  # agreement needs at least two raters per item
    n_items = counts.shape[0]
    p_j = counts.sum(axis=0) / (n_items * n)  # share of all ratings in category j
    p_i = (np.square(counts).sum(axis=1) - n) / (n * (n - 1.0))  # agreeing rater pairs per item
    p_bar = float(p_i.mean())
    p_e = float(np.square(p_j).sum())
    if 1.0 - p_e <= _DEGENERATE_EPS:
        return math.nan
    return (p_bar - p_e) / (1.0 - p_e)


def fleiss_kappa_from_labels(
    labels: Sequence[Sequence[Any]] | np.ndarray, categories: Sequence[Any] | None = None
) -> float:
    """Fleiss' kappa from an (N items x R raters) label matrix (items with missing labels dropped)."""
    counts, _ = label_counts(labels, categories)
    return fleiss_kappa(counts)


def cohen_kappa(a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray) -> float:
    """Cohen's kappa between two raters' labels of the same items.

    Pairs where either label is missing (None, NaN, "") are dropped. No pairs left, or both raters
    using one and the same single category (chance agreement 1) -> nan.
    """
    a_list = list(a.tolist() if isinstance(a, np.ndarray) else a)
    b_list = list(b.tolist() if isinstance(b, np.ndarray) else b)
    if len(a_list) != len(b_list):
        raise ValueError(f"cohen_kappa needs equally long label lists, got {len(a_list)} and {len(b_list)}")
    pairs = [(x, y) for x, y in zip(a_list, b_list, strict=True) if not (_is_missing(x) or _is_missing(y))]
    if not pairs:
        return math.nan
    cats = sorted({v for p in pairs for v in p}, key=str)
    index = {c: j for j, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)), dtype=np.float64)
    for x, y in pairs:
        table[index[x], index[y]] += 1.0
    table /= len(pairs)
    p_o = float(np.trace(table))
    p_e = float(table.sum(axis=1) @ table.sum(axis=0))
    if 1.0 - p_e <= _DEGENERATE_EPS:
        return math.nan
    return (p_o - p_e) / (1.0 - p_e)


def kappa_strength(kappa: float) -> str:
    """Landis & Koch (1977) wording for a kappa value, for readable reports ("n/a" for nan)."""
    if kappa is None or math.isnan(kappa):
        return "n/a"
    if kappa < 0:
        return "poor"
    for upper, word in ((0.20, "slight"), (0.40, "fair"), (0.60, "moderate"), (0.80, "substantial")):
        if kappa <= upper:
            return word
    return "almost perfect"


def kruskal_wallis(groups: Mapping[str, Iterable[float]]) -> dict[str, Any]:
    """Kruskal-Wallis H test across named groups (e.g. per-episode success per error type).

    NaNs are dropped and empty groups ignored. Returns a dict with `statistic` (H, tie-corrected as
    in SciPy), `p_value`, `df` (groups used - 1), `epsilon_squared` (rank effect size H / (n - 1),
    Tomczak & Tomczak 2014: 0 = no separation, 1 = groups fully separated), `n` (values used),
    `n_groups` (non-empty groups), `groups` (their names) and `note` ("" when the test ran normally,
    else the degenerate-case rule that applied; see the module docstring). Never raises on data.
    """
    from scipy.stats import kruskal

    used: dict[str, np.ndarray] = {}
    for name, values in groups.items():
        arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
        arr = arr[~np.isnan(arr)]
        if arr.size:
            used[str(name)] = arr
    n = int(sum(v.size for v in used.values()))
    result: dict[str, Any] = {
        "statistic": math.nan, "p_value": math.nan, "df": max(len(used) - 1, 0), "epsilon_squared": math.nan,
        "n": n, "n_groups": len(used), "groups": list(used), "note": "",
    }
    if len(used) < 2:
        result["note"] = f"needs at least 2 non-empty groups, got {len(used)}: not tested"
        return result
    pooled = np.concatenate(list(used.values()))
    if np.all(pooled == pooled[0]):
        # SciPy raises here ("All numbers are identical"); no rank differences means no evidence of
        # a difference, so p = 1 while H itself (0/0) stays undefined.
        result["p_value"] = 1.0
        result["note"] = f"all {n} values are identical ({pooled[0]:g}) across groups: no differences to test"
        return result
    try:
        stat, p = kruskal(*used.values())
    except ValueError as exc:  # any other SciPy refusal is reported, not raised
        result["note"] = f"scipy.stats.kruskal refused the data: {exc}"
        return result
    result["statistic"] = float(stat)
    result["p_value"] = float(p)
    # H <= n - 1 analytically (tie-corrected too); min() only trims float rounding.
    result["epsilon_squared"] = min(1.0, float(stat) / (n - 1)) if n > 1 else math.nan
    return result
