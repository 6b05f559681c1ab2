"""ONNX Runtime's type names as numpy dtypes: an input or output of a type icsnn-onnx cannot feed
or read is a :class:`ModelLoadError`, never silently float32."""

from __future__ import annotations

import numpy as np

from icsnn_onnx.errors import ModelLoadError

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64,
    "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def numpy_type(ort_type: str, name: str) -> np.dtype:
    """The numpy dtype of ONNX Runtime's ``tensor(...)`` type of tensor ``name``."""
    try:
        return np.dtype(_ORT_TYPES[ort_type])
    except KeyError:
        raise ModelLoadError(
            f"{name!r} has type {ort_type}, which icsnn-onnx does not feed or read"
        ) from None
