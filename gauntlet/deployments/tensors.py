"""NumPy <-> protobuf `Tensor` (dtype string, shape, raw bytes), validated on the way in."""

from __future__ import annotations

import numpy as np

from gauntlet.policies.msgpack_numpy import WireFormatError, _check_dtype


def to_tensor(arr: np.ndarray, tensor_cls: type) -> object:
    arr = np.ascontiguousarray(arr)
    return tensor_cls(dtype=arr.dtype.str, shape=list(arr.shape), data=arr.tobytes())


def from_tensor(tensor: object, field: str) -> np.ndarray:
    try:
        dtype = _check_dtype(tensor.dtype)
    except WireFormatError as exc:
        raise WireFormatError(f"{field}: {exc}") from None
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise WireFormatError(f"{field}: negative dimension in shape {list(shape)}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(tensor.data) != expected:
        raise WireFormatError(f"{field}: {len(tensor.data)} bytes, shape {list(shape)} of {dtype} needs {expected}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).copy()
