"""Which episodes a training run draws from, and how often: the held-out tail of a split and the
recovery-data fraction, shared by the dataset loader and the BC-RNN's window sampler.

Held out: the last `val_episodes` episodes of the split (in episode order, so the same episodes on
every worker and on every resume) are never trained on; the validation loss is measured on them.

Recovery fraction f: recovery-tagged episodes (`data collect --from-scenes`) are drawn with total
probability f and the others with 1 - f; inside each group every frame is equally likely (an episode
is drawn in proportion to its length). f = 0 selects the nominal demonstrations only, f = 1 the
recovery ones only. Off (None): every frame of the split equally likely, whatever its tag.
"""

from __future__ import annotations

import numpy as np


class SamplingError(ValueError):
    """A held-out count or recovery fraction the split cannot honour; the message names the setting."""


def split_holdout(episodes: np.ndarray, val_episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(training episodes, held-out episodes) of a split's episode indices; both non-empty when held out."""
    if val_episodes <= 0:
        return episodes, episodes[:0]
    if val_episodes >= len(episodes):
        raise SamplingError(f"val_episodes={val_episodes} leaves nothing to train on: the split has "
                            f"{len(episodes)} episodes")
    return episodes[:-val_episodes], episodes[-val_episodes:]


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
