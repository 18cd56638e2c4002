"""Reading and writing AnnData `.h5ad` files with h5py alone (no anndata/scanpy dependency).

The reader understands the on-disk layouts that spatial datasets are found in:
- `X` as a dense dataset, or a CSR/CSC group (`data`, `indices`, `indptr`, shape in the group attrs;
  old files call it `h5sparse_shape`);
- `obs` as a dataframe group (anndata >= 0.7: `_index` + one entry per column, categoricals as a group
  with `categories`/`codes`; before 0.8: codes as a dataset and the categories in
  `obs/__categories/<column>`), or as one compound dataset (anndata < 0.7);
- `obsm/spatial` as an (N, >=2) dataset, or a field of a compound `obsm` dataset (anndata < 0.7).

Only numbers and strings are read; nothing in a user's file is ever unpickled.
The writer produces the current layout (with encoding attributes), so `anndata.read_h5ad` reads it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from gauntlet.fusion.errors import AnnDataFormatError, MissingCoordinatesError, MissingLabelsError

# obs columns that commonly hold manual layer annotations, tried in order when no key is given
LABEL_KEY_CANDIDATES = (
    "layer_guess",
    "layer_guess_reordered",
    "ground_truth",
    "Ground Truth",
    "layer",
    "Layer",
    "label",
    "labels",
    "annotation",
    "Region",
)
# string labels that mean "not annotated"
MISSING_LABEL_STRINGS = frozenset({"", "nan", "NaN", "NA", "na", "None", "unknown", "Unknown"})


@dataclass(frozen=True)
class AnnDataSpots:
    """The parts of an `.h5ad` the fusion benchmark needs."""

    # file it was read from
    path: Path
    # (N, G) expression matrix as stored (dense float or CSR), before any preprocessing
    X: np.ndarray | sp.csr_matrix
    # (N,) spot ids (obs index)
    obs_names: np.ndarray
    # (N,) int64 label codes, -1 where not annotated
    labels: np.ndarray
    # label names by code
    label_names: tuple[str, ...]
    # (N, 2) float32 spot coordinates from obsm/spatial
    coords: np.ndarray
    # (N, F) float32 image embedding from obsm[image_key], or None when not stored in the file
    image: np.ndarray | None


def _decode(values: np.ndarray) -> np.ndarray:
    """h5py string datasets come back as bytes or objects; make them a numpy unicode array."""
    if values.dtype.kind in ("S", "O"):
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.tolist()])
    return values


def _read_strings(ds: h5py.Dataset) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[()]).astype(str)
    return _decode(ds[()])


def _read_matrix(path: Path, f: h5py.File) -> np.ndarray | sp.csr_matrix:
    if "X" not in f:
        raise AnnDataFormatError(f"{path}: no `X` (expression matrix); is this an AnnData .h5ad file?")
    node = f["X"]
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise AnnDataFormatError(f"{path}: `X` has {node.ndim} dimensions, expected 2 (spots x genes)")
        return np.asarray(node[()], dtype=np.float32)
    encoding = node.attrs.get("encoding-type", "")
    if isinstance(encoding, bytes):
        encoding = encoding.decode()
    shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    fmt = node.attrs.get("h5sparse_format", "")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if shape is None or not all(k in node for k in ("data", "indices", "indptr")):
        raise AnnDataFormatError(f"{path}: `X` is a group but not a sparse matrix (needs data/indices/indptr/shape)")
    parts = (node["data"][()], node["indices"][()], node["indptr"][()])
    shape = tuple(int(s) for s in shape)
    if encoding == "csc_matrix" or fmt == "csc":
        return sp.csc_matrix(parts, shape=shape, dtype=np.float32).tocsr()
    return sp.csr_matrix(parts, shape=shape, dtype=np.float32)


def _obs_columns(path: Path, f: h5py.File) -> tuple[np.ndarray, dict[str, h5py.Dataset | h5py.Group | np.ndarray]]:
    """(obs index, {column name: raw column}) for both the dataframe-group and compound layouts."""
    if "obs" not in f:
        raise MissingLabelsError(f"{path}: no `obs` table, so no layer labels; add an annotation column to obs")
    obs = f["obs"]
    if isinstance(obs, h5py.Dataset):  # anndata < 0.7: one structured array
        table = obs[()]
        names = table.dtype.names or ()
        index_field = "index" if "index" in names else names[0]
        cols = {n: table[n] for n in names if n != index_field}
        return _decode(table[index_field]), cols
    index_key = obs.attrs.get("_index", "_index")
    if isinstance(index_key, bytes):
        index_key = index_key.decode()
    if index_key not in obs:
        raise AnnDataFormatError(f"{path}: obs has no index dataset `{index_key}`")
    cols = {k: obs[k] for k in obs.keys() if k not in (index_key, "__categories")}
    return _read_strings(obs[index_key]), cols


def _column_as_labels(
    path: Path, f: h5py.File, key: str, column: h5py.Dataset | h5py.Group | np.ndarray
) -> tuple[np.ndarray, tuple[str, ...]]:
    """A label column -> (codes with -1 for missing, names). Handles categorical, string and numeric."""
    if isinstance(column, h5py.Group):  # anndata >= 0.8 categorical
        if "categories" not in column or "codes" not in column:
            raise MissingLabelsError(f"{path}: obs/{key} is a group but not a categorical (categories/codes)")
        categories = _read_strings(column["categories"]) if column["categories"].dtype.kind in "SOU" else (
            column["categories"][()].astype(str)
        )
        codes = column["codes"][()].astype(np.int64)
    elif "obs" in f and isinstance(f["obs"], h5py.Group) and "__categories" in f["obs"] and key in f["obs/__categories"]:
        categories = _read_strings(f["obs/__categories"][key])  # anndata 0.7 categorical
        codes = np.asarray(column[()]).astype(np.int64)
    else:  # plain strings or numbers: categories are the distinct non-missing values
        if isinstance(column, h5py.Dataset):
            values = _read_strings(column) if column.dtype.kind in "SO" else column[()]
        else:
            values = _decode(np.asarray(column))
        if values.dtype.kind == "f":  # NaN means "not annotated"; 3.0 reads as "3"
            finite = np.isfinite(values)
            text = np.full(values.shape, "", dtype=object)
            text[finite] = np.char.mod("%g", values[finite])
            text = text.astype(str)
        else:
            text = values.astype(str)
        categories, codes = np.unique(text, return_inverse=True)
        codes = codes.astype(np.int64)
    categories = np.asarray(categories).astype(str)
    # Missing-looking categories become -1 and the rest are renumbered densely.
    keep = np.array([c not in MISSING_LABEL_STRINGS for c in categories], dtype=bool)
    remap = np.full(categories.size + 1, -1, dtype=np.int64)  # last slot catches code -1
    remap[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
    codes = np.where((codes >= 0) & (codes < categories.size), codes, categories.size)
    return remap[codes], tuple(categories[keep].tolist())


def _read_obsm(path: Path, f: h5py.File, key: str) -> np.ndarray | None:
    if "obsm" not in f:
        return None
    obsm = f["obsm"]
    if isinstance(obsm, h5py.Dataset):  # anndata < 0.7: compound dataset, one field per key
        return np.asarray(obsm[key]) if key in (obsm.dtype.names or ()) else None
    if key not in obsm or not isinstance(obsm[key], h5py.Dataset):
        return None
    return np.asarray(obsm[key][()])


def read_h5ad(
    path: str | Path, label_key: str | None = None, image_key: str | None = None
) -> AnnDataSpots:
    """Reads expression, labels, coordinates (and optionally an image embedding) from an `.h5ad`.

    Raises MissingLabelsError / MissingCoordinatesError / AnnDataFormatError naming the file and field.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnDataFormatError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise AnnDataFormatError(f"{path}: not a readable HDF5/.h5ad file ({exc})") from exc
    with f:
        X = _read_matrix(path, f)
        n = X.shape[0]
        obs_names, columns = _obs_columns(path, f)
        if obs_names.shape[0] != n:
            raise AnnDataFormatError(f"{path}: obs has {obs_names.shape[0]} rows but X has {n}")
        keys = (label_key,) if label_key else tuple(k for k in LABEL_KEY_CANDIDATES if k in columns)
        if not keys or keys[0] not in columns:
            wanted = f"`{label_key}`" if label_key else f"any of {list(LABEL_KEY_CANDIDATES)}"
            raise MissingLabelsError(
                f"{path}: obs has no label column {wanted} (columns: {sorted(columns)}); "
                "pass --label-key with the annotation column"
            )
        labels, label_names = _column_as_labels(path, f, keys[0], columns[keys[0]])
        if labels.shape[0] != n:
            raise AnnDataFormatError(f"{path}: obs/{keys[0]} has {labels.shape[0]} values but X has {n} rows")
        if not (labels >= 0).any():
            raise MissingLabelsError(f"{path}: obs/{keys[0]} has no annotated spot (all values missing)")

        spatial = _read_obsm(path, f, "spatial")
        if spatial is None:
            raise MissingCoordinatesError(f"{path}: no `obsm/spatial` dataset with spot coordinates")
        if spatial.ndim != 2 or spatial.shape[0] != n or spatial.shape[1] < 2:
            raise MissingCoordinatesError(
                f"{path}: obsm/spatial has shape {spatial.shape}, expected ({n}, 2) (one x, y per spot)"
            )
        coords = spatial[:, :2].astype(np.float32)
        if not np.isfinite(coords).all():
            raise MissingCoordinatesError(f"{path}: obsm/spatial has NaN/inf coordinates")

        image = None
        if image_key:
            image = _read_obsm(path, f, image_key)
            if image is None or image.ndim != 2 or image.shape[0] != n:
                raise AnnDataFormatError(f"{path}: obsm/{image_key} missing or not an ({n}, F) array")
            image = image.astype(np.float32)
    if sp.issparse(X):
        finite = np.isfinite(X.data).all()
    else:
        finite = np.isfinite(X).all()
    if not finite:
        raise AnnDataFormatError(f"{path}: `X` contains NaN/inf values")
    return AnnDataSpots(
        path=path, X=X, obs_names=obs_names, labels=labels, label_names=label_names, coords=coords, image=image
    )


# ---- writer -----------------------------------------------------------------------------------------

_STR = h5py.string_dtype(encoding="utf-8")


def _set_encoding(node: h5py.Group | h5py.Dataset, kind: str, version: str) -> None:
    node.attrs["encoding-type"] = kind
    node.attrs["encoding-version"] = version


def _write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    ds = group.create_dataset(name, data=np.asarray([str(v) for v in values], dtype=object), dtype=_STR)
    _set_encoding(ds, "string-array", "0.2.0")


def _write_dataframe(
    group: h5py.Group,
    index: Sequence[str],
    columns: Mapping[str, Sequence | np.ndarray],
    legacy_categories: bool,
) -> None:
    _set_encoding(group, "dataframe", "0.2.0")
    group.attrs["_index"] = "_index"
    group.attrs["column-order"] = np.asarray(list(columns), dtype=object).astype(_STR) if columns else (
        np.zeros(0, dtype=_STR)
    )
    _write_strings(group, "_index", index)
    for name, values in columns.items():
        arr = np.asarray(values)
        if arr.dtype.kind in ("U", "S", "O"):  # strings are stored as a categorical, as anndata does
            text = arr.astype(str)
            present = np.isin(text, list(MISSING_LABEL_STRINGS), invert=True)
            categories = np.unique(text[present]).tolist()
            codes = np.full(text.shape, -1, dtype=np.int16)
            codes[present] = np.searchsorted(categories, text[present])
            if legacy_categories:  # anndata 0.7: codes as the column, categories under __categories
                group.create_dataset(name, data=codes)
                cats = group.require_group("__categories")
                cats.create_dataset(name, data=np.asarray(categories, dtype=object), dtype=_STR)
            else:
                cat = group.create_group(name)
                _set_encoding(cat, "categorical", "0.2.0")
                cat.attrs["ordered"] = False
                _write_strings(cat, "categories", categories)
                cat.create_dataset("codes", data=codes)
        else:
            ds = group.create_dataset(name, data=arr)
            _set_encoding(ds, "array", "0.2.0")


def write_h5ad(
    path: str | Path,
    X: np.ndarray | sp.spmatrix,
    *,
    obs: Mapping[str, Sequence | np.ndarray] | None = None,
    obsm: Mapping[str, np.ndarray] | None = None,
    obs_names: Sequence[str] | None = None,
    var_names: Sequence[str] | None = None,
    sparse: bool = False,
    legacy_categories: bool = False,
) -> Path:
    """Writes an AnnData `.h5ad` (current on-disk format) with h5py.

    String `obs` columns become categoricals (missing-looking strings become code -1);
    `sparse=True` stores X as CSR; `legacy_categories=True` writes categoricals the anndata 0.7 way.
    """
    path = Path(path)
    n, g = X.shape
    obs_names = list(obs_names) if obs_names is not None else [f"spot{i}" for i in range(n)]
    var_names = list(var_names) if var_names is not None else [f"gene{j}" for j in range(g)]
    with h5py.File(path, "w") as f:
        _set_encoding(f, "anndata", "0.1.0")
        if sparse or sp.issparse(X):
            csr = sp.csr_matrix(X, dtype=np.float32)
            grp = f.create_group("X")
            _set_encoding(grp, "csr_matrix", "0.1.0")
            grp.attrs["shape"] = np.asarray(csr.shape, dtype=np.int64)
            grp.create_dataset("data", data=csr.data)
            grp.create_dataset("indices", data=csr.indices)
            grp.create_dataset("indptr", data=csr.indptr)
        else:
            ds = f.create_dataset("X", data=np.asarray(X, dtype=np.float32))
            _set_encoding(ds, "array", "0.2.0")
        _write_dataframe(f.create_group("obs"), obs_names, dict(obs or {}), legacy_categories)
        _write_dataframe(f.create_group("var"), var_names, {}, legacy_categories=False)
        m = f.create_group("obsm")
        _set_encoding(m, "dict", "0.1.0")
        for key, value in (obsm or {}).items():
            ds = m.create_dataset(key, data=np.asarray(value))
            _set_encoding(ds, "array", "0.2.0")
        for empty in ("varm", "obsp", "varp", "layers", "uns"):
            _set_encoding(f.create_group(empty), "dict", "0.1.0")
    return path
