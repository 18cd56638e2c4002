"""Which episodes a training run draws from, and how often: the held-out episodes, each worker's share
and the recovery-data fraction, shared by the dataset loader and the BC-RNN's window sampler.

Held out (`val_episodes` N > 0): never trained on; the validation loss is measured on them. When the
dataset has a `valid` split apart from the trained one (`data collect --valid-fraction`), N of its
episodes; else N episodes of the trained split itself. Either way they are picked at an even stride
through the episodes, stratified by the `recovery` tag: recovery and nominal episodes are held out in
proportion to their counts, spread over the whole episode order (which runs task by task and variant
by variant, nominal parts before recovery parts after `data merge`), so the held-out loss measures the
mix the run trains on, not the split's last task or its recovery tail. The pick is deterministic (no
seed): the same episodes on every worker, on every resume and in every trial of a sweep.

Worker shares (the BC-RNN, whose workers each draw from episodes of their own): recovery and nominal
episodes are dealt round-robin separately, so every worker holds both kinds once the split holds at
least as many of each as there are workers.

Recovery fraction f: recovery-tagged episodes (`data collect --from-scenes`) are drawn with total
probability f and the others with 1 - f; inside each group every frame is equally likely (an episode
is drawn in proportion to its length). f = 0 selects the nominal demonstrations only, f = 1 the
recovery ones only. Off (None, the one spelling everywhere): every frame equally likely, whatever its tag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gauntlet.data.dataset_reader import Dataset

VALID_SPLIT = "valid"  # the split `data collect --valid-fraction` and `import-hdf5` write held-out episodes to


class SamplingError(ValueError):
    """A held-out count or recovery fraction the split cannot honour; the message names the setting."""


def stratified_stride(recovery: np.ndarray, count: int) -> np.ndarray:
    """Positions (sorted) of `count` of these episodes, picked at an even stride within the recovery and
    the nominal ones, each group contributing in proportion to its size (at least one of each kind
    present when `count` >= 2)."""
    recovery = np.asarray(recovery, dtype=bool)
    groups = [np.flatnonzero(recovery), np.flatnonzero(~recovery)]
    take_rec = int(np.floor(count * len(groups[0]) / max(len(recovery), 1) + 0.5))
    if count >= 2 and len(groups[0]) and len(groups[1]):
        take_rec = min(max(take_rec, 1), count - 1)
    take_nom = min(len(groups[1]), count - min(take_rec, len(groups[0])))
    take_rec = count - take_nom
    picked = [g[((np.arange(k) + 0.5) * len(g) / k).astype(np.int64)] for g, k in zip(groups, (take_rec, take_nom),
                                                                                       strict=True) if k]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def holdout(ds: Dataset, split: str, val_episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(episodes trained on, held-out episodes) of split `split` ('' = every episode), in episode order."""
    episodes = ds.split(split) if split else np.arange(ds.num_episodes, dtype=np.int64)
    if val_episodes <= 0:
        return episodes, episodes[:0]
    tags = ds.episodes["recovery"].to_numpy(dtype=bool)
    valid = np.zeros(0, dtype=np.int64)
    if ds.info["splits"].get(VALID_SPLIT):
        valid = np.setdiff1d(np.asarray(ds.info["splits"][VALID_SPLIT], dtype=np.int64), episodes)
    if len(valid):
        if val_episodes > len(valid):
            raise SamplingError(f"val_episodes={val_episodes} is more than the {len(valid)} episodes of the "
                                f"dataset's {VALID_SPLIT!r} split, which the held-out episodes come from")
        return episodes, valid[stratified_stride(tags[valid], val_episodes)]
    if val_episodes >= len(episodes):
        raise SamplingError(f"val_episodes={val_episodes} leaves nothing to train on: the split has "
                            f"{len(episodes)} episodes (and the dataset no {VALID_SPLIT!r} split)")
    held = episodes[stratified_stride(tags[episodes], val_episodes)]
    return episodes[~np.isin(episodes, held)], held


def deal(episodes: np.ndarray, recovery: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Worker `rank`'s share (of `world`) of these episodes, in episode order: recovery episodes dealt
    round-robin from rank 0, the nominal ones continuing the round (so the shares differ by at most one)."""
    recovery = np.asarray(recovery, dtype=bool)
    order = np.concatenate([episodes[recovery], episodes[~recovery]])
    return np.sort(order[rank::world])


def recovery_weights(lengths: np.ndarray, recovery: np.ndarray, fraction: float | None) -> np.ndarray:
    """Per-episode draw probabilities (summing to 1) for episodes of these lengths and recovery tags."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if fraction is None:
        return lengths / lengths.sum()
    recovery = np.asarray(recovery, dtype=bool)
    if not 0.0 <= fraction <= 1.0:
        raise SamplingError(f"recovery_fraction={fraction} is not in [0, 1]")
    weights = np.zeros_like(lengths)
    for share, group in ((fraction, recovery), (1.0 - fraction, ~recovery)):
        if share == 0.0:
            continue
        total = lengths[group].sum()
        if total == 0:
            kind = "recovery" if group is recovery else "nominal (untagged)"
            raise SamplingError(f"recovery_fraction={fraction} draws {share:g} of each batch from {kind} "
                                f"episodes, but the training episodes hold none")
        weights[group] = share * lengths[group] / total
    return weights
