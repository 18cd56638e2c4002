"""`.h5ad` reading (h5py only) against files written by our writer, in current and legacy layouts."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from gauntlet.fusion.anndata_io import read_h5ad, write_h5ad
from gauntlet.fusion.embedding_cache import save_embedding_cache
from gauntlet.fusion.errors import AnnDataFormatError, MissingCoordinatesError, MissingLabelsError
from gauntlet.fusion.slide_sources import SlideLoadOptions, image_cache_path, load_slide
from gauntlet.fusion.synthetic import SyntheticConfig, generate_tissue


@pytest.fixture(scope="module")
def tissue():
    return generate_tissue(SyntheticConfig(n_spots=121, n_layers=3, n_genes=40, image_dim=8, seed=1))


def _text_labels(tissue) -> np.ndarray:
    names = np.array(tissue.label_names)
    return np.where(tissue.labels >= 0, names[np.clip(tissue.labels, 0, None)], "nan")


@pytest.mark.parametrize("sparse,legacy", [(False, False), (True, False), (False, True)])
def test_round_trip(tmp_path, tissue, sparse, legacy):
    path = write_h5ad(
        tmp_path / "slide.h5ad", tissue.counts, obs={"layer_guess": _text_labels(tissue)},
        obsm={"spatial": tissue.coords}, sparse=sparse, legacy_categories=legacy,
    )
    spots = read_h5ad(path)
    dense = spots.X.toarray() if sp.issparse(spots.X) else spots.X
    assert sp.issparse(spots.X) == sparse
    np.testing.assert_array_equal(dense, tissue.counts)
    np.testing.assert_array_equal(spots.coords, tissue.coords)
    assert spots.label_names == tissue.label_names
    np.testing.assert_array_equal(spots.labels, tissue.labels)  # "nan" strings -> unlabelled (-1)
    assert spots.obs_names[0] == "spot0" and spots.obs_names.shape == (121,)


def test_numeric_label_column_with_nan_and_explicit_key(tmp_path, tissue):
    numeric = np.where(tissue.labels >= 0, tissue.labels + 1.0, np.nan)
    path = write_h5ad(tmp_path / "n.h5ad", tissue.counts, obs={"domain": numeric}, obsm={"spatial": tissue.coords})
    spots = read_h5ad(path, label_key="domain")
    assert spots.label_names == ("1", "2", "3")
    np.testing.assert_array_equal(spots.labels, tissue.labels)


def test_missing_label_column_names_file_and_columns(tmp_path, tissue):
    path = write_h5ad(tmp_path / "nolabels.h5ad", tissue.counts, obs={"batch": ["a"] * 121},
                      obsm={"spatial": tissue.coords})
    with pytest.raises(MissingLabelsError, match=r"nolabels\.h5ad.*no label column.*batch"):
        read_h5ad(path)
    with pytest.raises(MissingLabelsError, match="`region`"):
        read_h5ad(path, label_key="region")


def test_all_labels_missing(tmp_path, tissue):
    path = write_h5ad(tmp_path / "empty.h5ad", tissue.counts, obs={"layer": ["nan"] * 121},
                      obsm={"spatial": tissue.coords})
    with pytest.raises(MissingLabelsError, match="no annotated spot"):
        read_h5ad(path)


def test_missing_or_bad_coordinates(tmp_path, tissue):
    labels = {"layer_guess": _text_labels(tissue)}
    path = write_h5ad(tmp_path / "nocoords.h5ad", tissue.counts, obs=labels)
    with pytest.raises(MissingCoordinatesError, match=r"nocoords\.h5ad.*obsm/spatial"):
        read_h5ad(path)
    path = write_h5ad(tmp_path / "short.h5ad", tissue.counts, obs=labels, obsm={"spatial": tissue.coords[:10]})
    with pytest.raises(MissingCoordinatesError, match=r"shape \(10, 2\)"):
        read_h5ad(path)


def test_not_an_h5ad(tmp_path):
    bad = tmp_path / "junk.h5ad"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(AnnDataFormatError, match="junk.h5ad"):
        read_h5ad(bad)
    with h5py.File(tmp_path / "nox.h5ad", "w") as f:
        f.create_group("obs")
    with pytest.raises(AnnDataFormatError, match="no `X`"):
        read_h5ad(tmp_path / "nox.h5ad")


def test_load_slide_with_image_cache(tmp_path, tissue):
    path = write_h5ad(tmp_path / "s1.h5ad", tissue.counts, obs={"layer_guess": _text_labels(tissue)},
                      obsm={"spatial": tissue.coords}, sparse=True)
    ids = [f"spot{i}" for i in range(121)]
    save_embedding_cache(image_cache_path(path), tissue.image, spot_ids=ids, encoder="toy", slide="s1")
    slide = load_slide(str(path), SlideLoadOptions(image_encoder="toy"))
    assert slide.name == "s1" and slide.n_spots == 121 and slide.n_layers == 3
    assert slide.image.shape == (121, 8) and slide.expression.shape == (121, 40)
    np.testing.assert_allclose(slide.image.mean(axis=0), 0.0, atol=1e-5)  # standardised


def test_load_slide_from_obsm_image(tmp_path, tissue):
    path = write_h5ad(tmp_path / "s2.h5ad", tissue.counts, obs={"layer_guess": _text_labels(tissue)},
                      obsm={"spatial": tissue.coords, "image_features": tissue.image})
    slide = load_slide(str(path), SlideLoadOptions(image_key="image_features"))
    assert slide.image.shape == (121, 8)
