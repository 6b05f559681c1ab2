"""Can time be folded into the batch axis? (the time-batched layout)

The time-batched layout runs each per-step op once on a ``[T·N, …]`` tensor (steps stacked on
axis 0) instead of T times on ``[N, …]``. That is exact for an op iff it treats axis 0 as an
independent batch axis: it never reduces, indexes, reorders, pads or reshapes across it. Each
rule returns ``None`` when the op is safe, or why not; the unroll pass then keeps the
step-major layout (or refuses, when time-batched was explicitly asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.passes.graph_utils import constant_value, is_empty
from icsnn_onnx.passes.registry import RuleTable

Rule = Callable[[gs.Node, Sequence[bool]], str | None]
BATCH_RULES: RuleTable[Rule] = RuleTable("batch-folding")
batch_rule = BATCH_RULES.rule


def batch_fold_blocker(node: gs.Node, streams: Sequence[bool]) -> str | None:
    """``None`` if ``node`` may run once on time-stacked ``[T·N, …]`` streams, else why not."""
    fn = BATCH_RULES.get(node.op)
    if fn is None:
        return f"{node.op} has no time-batching rule"
    for tensor, is_stream in zip(node.inputs, streams, strict=True):
        if is_stream and tensor.shape is not None and len(tensor.shape) == 0:
            return f"time-varying scalar {tensor.name}: no batch axis to stack the steps on"
        if (
            not is_stream
            and isinstance(tensor, gs.Variable)
            and not is_empty(tensor)
            and tensor.shape is None
        ):
            return f"time-invariant input {tensor.name} has an unknown shape"
    return fn(node, streams)


def _rank(node: gs.Node) -> int | None:
    shape = node.inputs[0].shape
    return None if shape is None else len(shape)


def _axes_avoid_zero(axes: object, rank: int | None, what: str) -> str | None:
    if axes is None:
        return f"{what} over unspecified axes"
    values = np.atleast_1d(np.asarray(axes)).astype(np.int64)
    if rank is None and np.any(values < 0):
        return f"{what} with negative axes and unknown rank"
    normalized = values % rank if rank else values
    return f"{what} touches axis 0" if 0 in normalized.tolist() else None


def _constant_input(node: gs.Node, index: int) -> np.ndarray | None:
    if len(node.inputs) <= index or is_empty(node.inputs[index]):
        return None
    return constant_value(node.inputs[index])


@batch_rule(
    "Conv",
    "ConvTranspose",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "Identity",
    "Dropout",
    "Neg",
    "Cast",
    "DepthToSpace",
    "SpaceToDepth",
    "Sum",
    "LpPool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "LRN",
)
def _per_sample(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return None


@batch_rule("Add", "Sub", "Mul", "Div")
def _broadcast(node: gs.Node, streams: Sequence[bool]) -> str | None:
    ranks = [None if t.shape is None else len(t.shape) for t in node.inputs]
    top = max((r for r, s in zip(ranks, streams, strict=True) if s and r is not None), default=None)
    for tensor in node.inputs:
        value = constant_value(tensor)
        if value is not None and top is not None and value.ndim == top and value.shape[0] != 1:
            return f"constant {tensor.name} has a batch axis of {value.shape[0]}"
    return None


@batch_rule("MaxPool")
def _max_pool(node: gs.Node, streams: Sequence[bool]) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return "MaxPool's indices count the batch"  # flat over N·C·H·W
    return None


@batch_rule("Flatten")
def _flatten(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return "Flatten(axis=0) merges the batch" if node.attrs.get("axis", 1) == 0 else None


@batch_rule("Reshape")
def _reshape(node: gs.Node, streams: Sequence[bool]) -> str | None:
    shape = _constant_input(node, 1)
    if shape is None:
        return "Reshape to a shape computed at run time"
    zero_is_literal = node.attrs.get("allowzero", 0) and 0 in shape.tolist()
    if zero_is_literal or shape[0] not in (0, -1):
        return f"Reshape to {shape.tolist()} fixes the batch size"
    if shape[0] == -1 and -1 in shape[1:].tolist():
        return "Reshape with two inferred dimensions"
    return None


@batch_rule("Transpose")
def _transpose(node: gs.Node, streams: Sequence[bool]) -> str | None:
    perm = node.attrs.get("perm")
    return None if perm is not None and perm[0] == 0 else "Transpose moves axis 0"


@batch_rule("Squeeze", "Unsqueeze")
def _squeeze(node: gs.Node, streams: Sequence[bool]) -> str | None:
    axes = _constant_input(node, 1)
    rank = _rank(node)
    if node.op == "Unsqueeze" and axes is not None and rank is not None:
        rank += len(np.atleast_1d(axes))
    return _axes_avoid_zero(axes, rank, node.op)


@batch_rule("Concat", "Softmax", "LogSoftmax", "Gather", "Split", "ArgMax", "ArgMin")
def _axis_attribute(node: gs.Node, streams: Sequence[bool]) -> str | None:
    if node.op == "Gather" and any(streams[1:]):
        return "Gather with time-varying indices"
    default = -1 if node.op in ("Softmax", "LogSoftmax") else 0
    return _axes_avoid_zero(node.attrs.get("axis", default), _rank(node), node.op)


@batch_rule("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return _axes_avoid_zero(_constant_input(node, 1), _rank(node), node.op)


@batch_rule("Slice")
def _slice(node: gs.Node, streams: Sequence[bool]) -> str | None:
    axes = _constant_input(node, 3)
    if axes is None:  # default axes are 0..len(starts)-1
        return "Slice without explicit axes"
    return _axes_avoid_zero(axes, _rank(node), "Slice")


@batch_rule("Pad")
def _pad(node: gs.Node, streams: Sequence[bool]) -> str | None:
    pads = _constant_input(node, 1)
    if pads is None:
        return "Pad with run-time pads"
    axes = _constant_input(node, 3)
    if axes is not None:
        return _axes_avoid_zero(axes, _rank(node), "Pad")
    half = len(pads) // 2
    return "Pad pads axis 0" if pads[0] != 0 or pads[half] != 0 else None


@batch_rule("Gemm")
def _gemm(node: gs.Node, streams: Sequence[bool]) -> str | None:
    if streams[1] or node.attrs.get("transA", 0):
        return "Gemm whose batch is not the rows of A"
    return None


@batch_rule("MatMul")
def _matmul(node: gs.Node, streams: Sequence[bool]) -> str | None:
    if streams[1]:  # two activations (attention): a batched product, per sample when both are
        ranks = [None if t.shape is None else len(t.shape) for t in node.inputs[:2]]
        if all(r is not None and r >= 3 for r in ranks) and ranks[0] == ranks[1]:
            return None
        return "MatMul with a time-varying right operand that is not batched like the left"
    b = node.inputs[1]
    if b.shape is None or len(b.shape) > 2:
        return "MatMul with a batched right operand"
    return None


@batch_rule("LayerNormalization", "InstanceNormalization", "GroupNormalization")
def _normalization(node: gs.Node, streams: Sequence[bool]) -> str | None:
    if node.op == "LayerNormalization":
        return _axes_avoid_zero(node.attrs.get("axis", -1), _rank(node), node.op)
    return None  # over each sample's channels or groups


@batch_rule(
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Erf",
    "Abs",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Softplus",
    "Softsign",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Mish",
    "ThresholdedRelu",
    "Not",
)
def _unary(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return None  # elementwise, one operand


@batch_rule(
    "Pow",
    "Max",
    "Min",
    "Where",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "And",
    "Or",
    "Clip",
    "PRelu",
)
def _elementwise(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return _broadcast(node, streams)


@batch_rule("Resize")
def _resize(node: gs.Node, streams: Sequence[bool]) -> str | None:
    scales = _constant_input(node, 2)
    if scales is not None and scales.size and scales[0] == 1:
        return None
    return "Resize that may scale axis 0"
