"""Numpy semantics of ONNX elementwise operators.

One table serves two purposes: evaluating a candidate activation chain on a grid of scalars
(to recognize activations by what they compute) and evaluating the IF neuron's equations in the
numpy reference simulator. Each entry follows the ONNX operator specification (opset 21).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

Array = np.ndarray

#: ONNX tensor element types that are floating point.
FLOAT_TENSOR_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
)
OpImpl = Callable[[Sequence[Array | None], Mapping[str, Any]], Array]


def _sigmoid(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


def _clip(inputs: Sequence[Array | None], attrs: Mapping[str, Any]) -> Array:
    x = inputs[0]
    lo = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("min")
    hi = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("max")
    if lo is not None:
        x = np.maximum(x, lo)
    if hi is not None:
        x = np.minimum(x, hi)
    return x


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _cast(inputs: Sequence[Array | None], attrs: Mapping[str, Any]) -> Array:
    return np.asarray(inputs[0]).astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))


def _gelu(inputs: Sequence[Array | None], attrs: Mapping[str, Any]) -> Array:
    x = inputs[0]
    approximate = attrs.get("approximate", "none")
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _reduce_variadic(fn: Callable[[Array, Array], Array]) -> OpImpl:
    def impl(inputs: Sequence[Array | None], attrs: Mapping[str, Any]) -> Array:
        present = [i for i in inputs if i is not None]
        out = present[0]
        for other in present[1:]:
            out = fn(out, other)
        return out

    return impl


def _unary(fn: Callable[..., Array]) -> OpImpl:
    return lambda inputs, attrs: fn(inputs[0])


def _binary(fn: Callable[[Array, Array], Array]) -> OpImpl:
    return lambda inputs, attrs: fn(inputs[0], inputs[1])


NUMPY_OPS: dict[str, OpImpl] = {
    "Identity": _unary(lambda x: x),
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(np.divide),
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil),
    "Round": _unary(np.round),  # ONNX Round is round-half-to-even, like numpy
    "Sign": _unary(np.sign),
    "Relu": _unary(lambda x: np.maximum(x, 0)),
    "Max": _reduce_variadic(np.maximum),
    "Min": _reduce_variadic(np.minimum),
    "Clip": _clip,
    "Sigmoid": _unary(_sigmoid),
    "Tanh": _unary(np.tanh),
    "Softplus": _unary(lambda x: np.logaddexp(0, x)),
    "LeakyRelu": lambda i, a: np.where(i[0] >= 0, i[0], a.get("alpha", 0.01) * i[0]),
    "PRelu": lambda i, a: np.where(i[0] >= 0, i[0], i[1] * i[0]),
    "Elu": lambda i, a: np.where(i[0] >= 0, i[0], a.get("alpha", 1.0) * np.expm1(i[0])),
    "Selu": lambda i, a: (
        a.get("gamma", 1.0507009873554805)
        * np.where(i[0] > 0, i[0], a.get("alpha", 1.6732632423543772) * np.expm1(i[0]))
    ),
    "ThresholdedRelu": lambda i, a: np.where(i[0] > a.get("alpha", 1.0), i[0], 0),
    "HardSigmoid": lambda i, a: np.clip(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1),
    "HardSwish": _unary(lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "Softsign": _unary(lambda x: x / (1 + np.abs(x))),
    "Mish": _unary(lambda x: x * np.tanh(np.logaddexp(0, x))),
    "Gelu": _gelu,
    "Erf": _unary(_erf),
    "Exp": _unary(np.exp),
    "Log": _unary(np.log),
    "Sqrt": _unary(np.sqrt),
    "Reciprocal": _unary(np.reciprocal),
    "Pow": _binary(np.power),
    "Greater": _binary(np.greater),
    "GreaterOrEqual": _binary(np.greater_equal),
    "Less": _binary(np.less),
    "LessOrEqual": _binary(np.less_equal),
    "Equal": _binary(np.equal),
    "Not": _unary(np.logical_not),
    "And": _binary(np.logical_and),
    "Or": _binary(np.logical_or),
    "Xor": _binary(np.logical_xor),
    "Where": lambda i, a: np.where(i[0], i[1], i[2]),
    "CastLike": lambda i, a: i[0].astype(i[1].dtype),
    "Cast": _cast,
}

# Operators that are affine in their non-constant inputs (a Mul or Div of two of them is not:
# activation recognition checks that separately); everything else in NUMPY_OPS is treated as
# (potentially) nonlinear when recognizing activations.
AFFINE_ELEMENTWISE = frozenset({"Identity", "Add", "Sub", "Mul", "Div", "Neg", "Cast"})


def evaluate(op_type: str, inputs: Sequence[Array | None], attrs: Mapping[str, Any]) -> Array:
    """Evaluate one elementwise ONNX operator on numpy arrays."""
    try:
        impl = NUMPY_OPS[op_type]
    except KeyError:
        raise KeyError(f"no numpy semantics for elementwise op {op_type!r}") from None
    return np.asarray(impl(inputs, attrs))
