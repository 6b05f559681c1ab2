"""A model's inputs as data must match them: names, dtypes and shapes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from icsnn_onnx.errors import DataError

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """Name, dtype and shape (``int`` static, ``str``/``None`` dynamic) of a model input."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if not isinstance(d, int) else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    @property
    def static_batch(self) -> int | None:
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) and first > 0 else None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller feeds (initializers listed as inputs excluded)."""
    weights = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        dims: list[Dim] = []
        for d in tensor.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        specs.append(InputSpec(value.name, dtype, tuple(dims)))
    return specs


def check_same_inputs(snn: list[InputSpec], ann: list[InputSpec], ann_name: str) -> None:
    """An ANN compared with an SNN must take the same inputs: name the first that differs."""
    if [s.name for s in snn] != [s.name for s in ann]:
        raise DataError(
            f"the ANN {ann_name} takes inputs {[s.name for s in ann]}, the SNN {[s.name for s in snn]}: "
            "give the ANN the SNN was converted from"
        )
    for a, b in zip(snn, ann, strict=True):
        static = (
            [d if isinstance(d, int) else None for d in a.shape],
            [d if isinstance(d, int) else None for d in b.shape],
        )
        if (
            a.dtype != b.dtype
            or len(a.shape) != len(b.shape)
            or any(x is not None and y is not None and x != y for x, y in zip(*static, strict=True))
        ):
            raise DataError(
                f"input {a.name!r}: the SNN takes {a.describe()}, the ANN {ann_name} {b.describe()}"
            )
