"""msgpack with NumPy arrays, in openpi's wire convention, and never pickle.

An array travels as `{"__ndarray__": True, "data": bytes, "dtype": str, "shape": [...]}` and a NumPy
scalar as `{"__npgeneric__": True, "data": value, "dtype": str}`. openpi-client writes those marker
keys as msgpack *bin* (Python bytes) and only recognises them in that form, so we write them the same
way and read either form. Only plain numeric, bool and fixed-width string dtypes are accepted on the
way in: an object dtype would need pickle, so it is refused with a clear error instead.
"""

from __future__ import annotations

import functools
from typing import Any

import msgpack
import numpy as np

_ALLOWED_KINDS = set("biufU")  # bool, ints, floats, unicode; never "O" (object), "V" or complex


class WireFormatError(ValueError):
    """A body that is not valid msgpack-numpy; the message says which part."""


def _check_dtype(dtype_str: Any) -> np.dtype:
    try:
        dtype = np.dtype(dtype_str)
    except TypeError as exc:
        raise WireFormatError(f"unknown dtype {dtype_str!r}") from exc
    if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject:
        raise WireFormatError(f"dtype {dtype_str!r} is not allowed on the wire (object/void dtypes need pickle)")
    return dtype


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise WireFormatError(f"cannot send arrays of dtype {obj.dtype}")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise WireFormatError(f"cannot send scalars of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _get(obj: dict, key: str) -> Any:
    """A marker map's field, whether its key arrived as str or as bytes (openpi)."""
    if key in obj:
        return obj[key]
    return obj[key.encode()]


def _decode(obj: dict) -> Any:
    if obj.get("__ndarray__", obj.get(b"__ndarray__")) is True:
        try:
            dtype = _check_dtype(_get(obj, "dtype"))
            shape = tuple(_get(obj, "shape"))
            if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
                raise ValueError(f"shape {list(shape)} must be a list of integers")
            data = _get(obj, "data")
        except (KeyError, TypeError, ValueError) as exc:
            raise WireFormatError(f"malformed __ndarray__ map: {exc}") from None
        if not isinstance(data, (bytes, bytearray)):
            raise WireFormatError("__ndarray__ data must be bytes")
        if any(s < 0 for s in shape):
            raise WireFormatError(f"__ndarray__ shape {list(shape)} has a negative dimension")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(data) != expected:
            raise WireFormatError(f"__ndarray__ has {len(data)} bytes, shape {shape} of {dtype} needs {expected}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if obj.get("__npgeneric__", obj.get(b"__npgeneric__")) is True:
        try:
            dtype = _check_dtype(_get(obj, "dtype"))
            data = _get(obj, "data")
            if isinstance(data, (bytes, bytearray)):
                return np.frombuffer(data, dtype=dtype)[0]
            return dtype.type(data)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise WireFormatError(f"malformed __npgeneric__ map: {exc}") from None
    return obj


packb = functools.partial(msgpack.packb, default=_encode, use_bin_type=True)


def unpackb(data: bytes, max_bytes: int | None = None) -> Any:
    """Decodes a body; raises WireFormatError (never anything else) on bad input."""
    if max_bytes is not None and len(data) > max_bytes:
        raise WireFormatError(f"body of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except WireFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the bytes make the decoder raise is the sender's mistake
        raise WireFormatError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
