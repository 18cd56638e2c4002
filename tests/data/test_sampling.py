"""Which episodes a training run holds out and deals to each worker (gauntlet.data.sampling), on the
plain index arrays; the dataset-level choice (the valid split, the pre-flight) is in
tests/platform/train/test_recipes.py."""

from __future__ import annotations

import numpy as np
import pytest

from gauntlet.data.sampling import SamplingError, deal, recovery_weights, stratified_stride


def test_stratified_stride_spreads_each_kind_in_proportion() -> None:
    merged = np.array([False] * 6 + [True] * 2)  # `data merge nominal recovery`: a recovery tail
    assert stratified_stride(merged, 4).tolist() == [1, 3, 5, 7]  # 3 nominal spread out, 1 recovery
    assert stratified_stride(merged, 1).tolist() == [3]
    assert stratified_stride(np.zeros(10, bool), 2).tolist() == [2, 7]
    picked = stratified_stride(merged, 8)
    assert picked.tolist() == list(range(8))  # every episode, each once
    assert stratified_stride(np.array([True] * 2 + [False]), 2).tolist() == [1, 2]  # one of each kind


def test_deal_gives_every_worker_both_kinds() -> None:
    episodes = np.arange(8)
    tags = np.array([False] * 6 + [True] * 2)  # a recovery tail: every 2nd episode would miss it on rank 0
    shares = [deal(episodes, tags, rank, 2) for rank in range(2)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(8))  # disjoint, together every episode
    for share in shares:
        assert tags[share].any() and (~tags[share]).any()
        recovery_weights(np.ones(len(share)), tags[share], 0.5)  # each share honours a fraction
    assert [len(s) for s in shares] == [4, 4]
    lone = deal(episodes, np.array([True] + [False] * 7), 1, 2)
    with pytest.raises(SamplingError, match="recovery episodes, but the training episodes hold none"):
        recovery_weights(np.ones(len(lone)), np.zeros(len(lone), bool), 0.5)
