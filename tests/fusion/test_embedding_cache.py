"""Embedding caches are validated on load and never unpickled."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gauntlet.fusion.embedding_cache import CACHE_VERSION, load_embedding_cache, save_embedding_cache
from gauntlet.fusion.errors import CacheShapeError, CacheVersionError, EmbeddingCacheError

IDS = [f"spot{i}" for i in range(10)]


@pytest.fixture()
def emb():
    return np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)


def test_good_cache_round_trips(tmp_path, emb):
    path = save_embedding_cache(tmp_path / "c.npz", emb, spot_ids=IDS, encoder="uni", slide="s")
    loaded, meta = load_embedding_cache(path, spot_ids=np.array(IDS), encoder="uni", modality="image", dims=6)
    np.testing.assert_array_equal(loaded, emb)
    assert (meta.encoder, meta.dims, meta.n_spots, meta.cache_version) == ("uni", 6, 10, CACHE_VERSION)


def test_wrong_version(tmp_path, emb):
    path = save_embedding_cache(tmp_path / "old.npz", emb, spot_ids=IDS, encoder="uni", cache_version=CACHE_VERSION - 1)
    with pytest.raises(CacheVersionError, match=r"old\.npz.*regenerate"):
        load_embedding_cache(path)


def test_wrong_dims(tmp_path, emb):
    path = save_embedding_cache(tmp_path / "c.npz", emb, spot_ids=IDS, encoder="uni")
    with pytest.raises(CacheShapeError, match="dims=6, expected 1024"):
        load_embedding_cache(path, dims=1024)


def test_array_shape_disagrees_with_metadata(tmp_path, emb):
    meta = {"cache_version": CACHE_VERSION, "encoder": "uni", "modality": "image", "dims": 6, "n_spots": 12,
            "slide": "s"}
    path = tmp_path / "lying.npz"
    np.savez(path, embeddings=emb, spot_ids=np.array(IDS), metadata=np.asarray(json.dumps(meta)))
    with pytest.raises(CacheShapeError, match=r"lying\.npz.*\(10, 6\).*n_spots=12"):
        load_embedding_cache(path)


def test_spot_ids_or_count_disagree_with_slide(tmp_path, emb):
    path = save_embedding_cache(tmp_path / "c.npz", emb, spot_ids=IDS, encoder="uni")
    with pytest.raises(CacheShapeError, match="cache has 10 spots, the slide has 11"):
        load_embedding_cache(path, spot_ids=np.array([*IDS, "extra"]))
    shuffled = np.array(IDS[::-1])
    with pytest.raises(CacheShapeError, match="spot_ids differ"):
        load_embedding_cache(path, spot_ids=shuffled)


def test_wrong_encoder_or_modality(tmp_path, emb):
    path = save_embedding_cache(tmp_path / "c.npz", emb, spot_ids=IDS, encoder="uni")
    with pytest.raises(EmbeddingCacheError, match="encoder 'uni', expected 'conch'"):
        load_embedding_cache(path, encoder="conch")
    with pytest.raises(EmbeddingCacheError, match="modality 'image', expected 'expression'"):
        load_embedding_cache(path, modality="expression")


def test_pickled_content_is_refused_not_unpickled(tmp_path, emb):
    path = tmp_path / "pickle.npz"
    np.savez(path, embeddings=emb, spot_ids=np.array(IDS, dtype=object), metadata=np.array({"x": 1}, dtype=object))
    with pytest.raises(EmbeddingCacheError, match="unreadable"):
        load_embedding_cache(path)


def test_missing_arrays_and_missing_file(tmp_path, emb):
    path = tmp_path / "bare.npz"
    np.savez(path, embeddings=emb)
    with pytest.raises(EmbeddingCacheError, match=r"missing arrays \['spot_ids', 'metadata'\]"):
        load_embedding_cache(path)
    with pytest.raises(EmbeddingCacheError, match="not found"):
        load_embedding_cache(tmp_path / "nope.npz")


def test_non_finite_values(tmp_path, emb):
    emb[3, 2] = np.nan
    path = save_embedding_cache(tmp_path / "nan.npz", emb, spot_ids=IDS, encoder="uni")
    with pytest.raises(EmbeddingCacheError, match="NaN/inf"):
        load_embedding_cache(path)
