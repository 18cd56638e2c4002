"""Typed errors of the fusion subsystem.

Every error a bad input or a collapsing fit can raise is a `FusionError`, so a sweep trial can catch
exactly these, record the reason and move on, while a programming error still surfaces as a crash.
Messages name the file and the field and say what to do.
"""

from __future__ import annotations


class FusionError(Exception):
    """Base of every expected, reportable failure of a fusion trial."""


class AnnDataFormatError(FusionError):
    """An `.h5ad` file is unreadable or its layout is not the AnnData on-disk format."""


class MissingLabelsError(AnnDataFormatError):
    """The `.h5ad` file has no usable layer-label column in `obs`."""


class MissingCoordinatesError(AnnDataFormatError):
    """The `.h5ad` file has no usable `obsm/spatial` coordinates."""


class EmbeddingCacheError(FusionError):
    """An embedding cache (`.npz`) is unreadable, stale or does not match its slide."""


class CacheVersionError(EmbeddingCacheError):
    """The cache was written by another cache format version; it must be regenerated."""


class CacheShapeError(EmbeddingCacheError):
    """The cache's array shape, dims or spot ids disagree with its metadata or its slide."""


class NonFiniteEmbeddingError(FusionError):
    """A fusion method produced NaN/inf embeddings; clustering them would be meaningless."""


class TrainingDivergedError(FusionError):
    """A learned fusion method's loss became NaN/inf during training."""


class SlideSpecError(FusionError):
    """A `--slides` entry is neither `synthetic:N` nor an existing `.h5ad` path."""
