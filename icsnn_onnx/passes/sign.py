"""Which tensors are provably non-negative, by forward inference through the graph.

A padded MaxPool decomposes exactly only where its input is ≥ 0 (the pad value 0 never wins
there): a neuron's output, and everything built from such outputs by ops that keep the sign —
Inception's padded MaxPool reads a Concat of neuron outputs, GoogLeNet's another MaxPool.
Each op has one rule: given which of its inputs are non-negative (constants by value), whether
its outputs are.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.passes.graph_utils import constant_value, is_empty
from icsnn_onnx.passes.registry import RuleTable

SignRule = Callable[[gs.Node, Sequence[bool]], bool]

SIGN_RULES: RuleTable[SignRule] = RuleTable("sign")
sign_rule = SIGN_RULES.rule


def nonnegative_tensors(graph: gs.Graph, known: Collection[str]) -> frozenset[str]:
    """Names of the tensors of ``graph`` (topologically sorted) that are ≥ 0 whatever the input,
    given that the tensors ``known`` are."""
    result = set(known)
    for node in graph.nodes:
        rule = SIGN_RULES.get(node.op)
        if rule is None or (node.domain or "") not in ("", "ai.onnx"):
            continue
        flags = [_nonnegative(t, result) for t in node.inputs]
        if rule(node, flags):
            result.update(t.name for t in node.outputs[:1])
    return frozenset(result)


def _nonnegative(tensor: gs.Tensor, known: set[str]) -> bool:
    if is_empty(tensor):
        return True
    value = constant_value(tensor)
    if value is not None:
        return value.dtype.kind != "f" or bool(np.all(value >= 0))
    return tensor.name in known


@sign_rule("Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus", "HardSigmoid")
def _always(node: gs.Node, flags: Sequence[bool]) -> bool:
    return True


@sign_rule(
    "Identity",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
    "Split",
    "Expand",
    "Tile",
    "DepthToSpace",
    "SpaceToDepth",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "Dropout",
    "Cast",
    "Sqrt",
)
def _first_input(node: gs.Node, flags: Sequence[bool]) -> bool:
    return flags[0]


@sign_rule("Concat", "Add", "Sum", "Mul", "Min", "Mean")
def _all_inputs(node: gs.Node, flags: Sequence[bool]) -> bool:
    return all(flags)


@sign_rule("Max")
def _any_input(node: gs.Node, flags: Sequence[bool]) -> bool:
    return any(flags)


@sign_rule("Div")
def _nonnegative_ratio(node: gs.Node, flags: Sequence[bool]) -> bool:
    return all(flags)  # a non-negative divisor (0 gives +inf or NaN, which MaxPool never pads)


@sign_rule("LRN")
def _lrn(node: gs.Node, flags: Sequence[bool]) -> bool:
    return flags[0] and float(node.attrs.get("bias", 1.0)) > 0  # x / (bias + α·Σx²/n)^β


@sign_rule("Pad")
def _pad(node: gs.Node, flags: Sequence[bool]) -> bool:
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    # Constant padding adds its value (default 0); the other modes repeat input values.
    return flags[0] and (mode != "constant" or len(flags) < 3 or flags[2])


@sign_rule("Clip")
def _clip(node: gs.Node, flags: Sequence[bool]) -> bool:
    if flags[0]:
        return True
    low = constant_value(node.inputs[1]) if len(node.inputs) > 1 and not is_empty(node.inputs[1]) else None
    if low is None and "min" in node.attrs:
        low = np.asarray(node.attrs["min"])
    return low is not None and bool(np.all(low >= 0))


@sign_rule("Resize", "Upsample")
def _resize(node: gs.Node, flags: Sequence[bool]) -> bool:
    mode = node.attrs.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    return flags[0] and mode in ("nearest", "linear")  # cubic interpolation overshoots below 0
