"""Embedding caches: per-spot encoder outputs (e.g. a histology encoder's image embedding) in `.npz`.

Computing a foundation-model embedding for every patch is slow, so it is done once and cached next
to the slide. A cache is only trusted if its recorded metadata (format version, encoder, modality,
dims, spot count and the spot ids themselves) matches both its array and the slide it is used with:
a stale or misaligned cache would otherwise silently pair spot i's image with spot j's expression.

Format: `embeddings` (N, D) float32, `spot_ids` (N,) unicode, `metadata` a 0-d unicode array holding
JSON. Everything is a plain numeric/unicode array, so the loader uses `allow_pickle=False`: nothing
from a user's file is ever unpickled.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gauntlet.fusion.errors import CacheShapeError, CacheVersionError, EmbeddingCacheError

CACHE_VERSION = 1  # bump when the layout or meaning of a cache changes; old caches are then rejected
_REQUIRED_KEYS = ("embeddings", "spot_ids", "metadata")


@dataclass(frozen=True)
class CacheMetadata:
    """What a cache records about how it was made."""

    # cache format version it was written with (CACHE_VERSION at write time)
    cache_version: int
    # encoder that produced the embedding, e.g. "uni-vit-l16" (free text, compared verbatim)
    encoder: str
    # which modality it embeds: "image" or "expression"
    modality: str
    # width D of each embedding
    dims: int
    # number of spots N
    n_spots: int
    # slide the spots belong to (file stem); informational
    slide: str


def save_embedding_cache(
    path: str | Path,
    embeddings: np.ndarray,
    *,
    spot_ids: np.ndarray | list[str],
    encoder: str,
    modality: str = "image",
    slide: str = "",
    cache_version: int = CACHE_VERSION,
) -> Path:
    """Writes an embedding cache; `cache_version` is only overridden by tests of stale caches."""
    emb = np.asarray(embeddings, dtype=np.float32)
    ids = np.asarray(spot_ids).astype(str)
    if emb.ndim != 2 or ids.shape != (emb.shape[0],):
        raise ValueError(f"embeddings must be (N, D) with N spot ids; got {emb.shape} and {ids.shape} ids")
    meta = CacheMetadata(
        cache_version=cache_version, encoder=encoder, modality=modality, dims=int(emb.shape[1]),
        n_spots=int(emb.shape[0]), slide=slide,
    )
    path = Path(path)
    with path.open("wb") as fh:  # a file handle keeps numpy from appending a second ".npz"
        np.savez(fh, embeddings=emb, spot_ids=ids, metadata=np.asarray(json.dumps(asdict(meta))))
    return path


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray, CacheMetadata]:
    """(embeddings, spot_ids, metadata) as the file holds them, unchecked against each other."""
    if not path.is_file():
        raise EmbeddingCacheError(f"{path}: embedding cache not found; compute it or point to the right file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _REQUIRED_KEYS if k not in npz.files]
            if missing:
                raise EmbeddingCacheError(f"{path}: not an embedding cache, missing arrays {missing}")
            emb = npz["embeddings"]
            ids = npz["spot_ids"]
            raw_meta = npz["metadata"]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:  # pickled object arrays land here too
        raise EmbeddingCacheError(f"{path}: unreadable embedding cache ({exc})") from exc
    try:
        fields = json.loads(str(raw_meta[()]))
        meta = CacheMetadata(**{k: fields[k] for k in CacheMetadata.__dataclass_fields__})
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EmbeddingCacheError(f"{path}: cache metadata is malformed ({exc})") from exc
    return emb, ids, meta


def _check_spot_ids(path: Path, ids: np.ndarray, spot_ids: np.ndarray) -> None:
    """The cache's spot ids must be the slide's, in the slide's order."""
    want = np.asarray(spot_ids).astype(str)
    if want.shape != ids.shape:
        raise CacheShapeError(f"{path}: cache has {ids.shape[0]} spots, the slide has {want.shape[0]}")
    mismatched = np.flatnonzero(want != ids.astype(str))
    if mismatched.size:
        i = int(mismatched[0])
        raise CacheShapeError(
            f"{path}: spot_ids differ from the slide's at {mismatched.size} positions "
            f"(first: row {i}, cache {ids[i]!r} vs slide {want[i]!r})"
        )


def load_embedding_cache(
    path: str | Path,
    *,
    spot_ids: np.ndarray | None = None,
    encoder: str | None = None,
    modality: str | None = None,
    dims: int | None = None,
) -> tuple[np.ndarray, CacheMetadata]:
    """Loads and validates a cache; each keyword, when given, must match what the cache records.

    Raises CacheVersionError (stale format), CacheShapeError (array vs metadata vs slide mismatch) or
    EmbeddingCacheError (unreadable, wrong encoder/modality, non-finite values), naming the file.
    """
    path = Path(path)
    emb, ids, meta = _read_cache(path)
    if meta.cache_version != CACHE_VERSION:
        raise CacheVersionError(
            f"{path}: cache_version {meta.cache_version}, this code reads version {CACHE_VERSION}; "
            "regenerate the cache"
        )
    if emb.ndim != 2 or emb.shape != (meta.n_spots, meta.dims):
        raise CacheShapeError(
            f"{path}: `embeddings` has shape {emb.shape} but metadata records "
            f"n_spots={meta.n_spots}, dims={meta.dims}"
        )
    if ids.shape != (meta.n_spots,):
        raise CacheShapeError(f"{path}: `spot_ids` has shape {ids.shape}, expected ({meta.n_spots},)")
    if encoder is not None and meta.encoder != encoder:
        raise EmbeddingCacheError(f"{path}: made by encoder {meta.encoder!r}, expected {encoder!r}")
    if modality is not None and meta.modality != modality:
        raise EmbeddingCacheError(f"{path}: holds modality {meta.modality!r}, expected {modality!r}")
    if dims is not None and meta.dims != dims:
        raise CacheShapeError(f"{path}: dims={meta.dims}, expected {dims}")
    if spot_ids is not None:
        _check_spot_ids(path, ids, spot_ids)
    if not np.isfinite(emb).all():
        raise EmbeddingCacheError(f"{path}: `embeddings` contains NaN/inf values")
    return emb.astype(np.float32, copy=False), meta
