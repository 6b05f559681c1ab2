"""How each operator behaves over time: the per-op conversion rule registry.

Between spiking layers the network runs once per time step and the read-out averages over
steps, so an op is exact there iff it is *affine in its time-varying ("stream") inputs*:
``mean_t f(x_t) = f(mean_t x_t)``. Each rule receives the node and which of its inputs are
streams, and returns ``None`` when the node is affine in them, or the reason it is not.

Ops with no stream input are time-invariant and computed once, whatever they are; nonlinear
ops after the last neurons are applied once to the averaged read-out (e.g. Softmax). A
non-affine op *between* neurons is compensated (:mod:`.compensate`): the reason given here is
what ``inspect`` shows for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx_graphsurgeon as gs

from icsnn_onnx.ops.elementwise import FLOAT_TENSOR_TYPES
from icsnn_onnx.passes.registry import RuleTable

Rule = Callable[[gs.Node, Sequence[bool]], str | None]

RULES: RuleTable[Rule] = RuleTable("conversion")

#: Ops whose output depends only on their input's shape: computed once, from step 1.
STRUCTURAL_OPS = frozenset({"Shape", "Size"})


rule = RULES.rule


def check(node: gs.Node, streams: Sequence[bool]) -> str | None:
    """``None`` if ``node`` is affine in its stream inputs, else why not."""
    if (node.domain or "") not in ("", "ai.onnx"):
        return f"no conversion rule for operators of domain {node.domain!r}"
    fn = RULES.get(node.op)
    if fn is None:
        return f"no conversion rule for {node.op}"
    return fn(node, streams)


@rule("Add", "Sub", "Sum", "Concat", "Neg", "Identity")
def _always_linear(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return None  # sums and copies of streams, residual Adds included


@rule(
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Split",
    "Slice",
    "Gather",
    "Expand",
    "Tile",
    "DepthToSpace",
    "SpaceToDepth",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "ReduceSum",
    "Pad",
    "Resize",
    "Upsample",
    "Dropout",
    "BatchNormalization",
    "Conv",
    "ConvTranspose",
)
def _linear_in_first_input(node: gs.Node, streams: Sequence[bool]) -> str | None:
    if any(streams[1:]):
        names = [t.name for t, s in zip(node.inputs[1:], streams[1:], strict=True) if s]
        return f"its parameter input(s) {names} vary over time"
    return None


@rule("Mul", "MatMul", "Gemm", "Einsum")
def _one_stream_factor(node: gs.Node, streams: Sequence[bool]) -> str | None:
    factors = streams[:2]
    if sum(factors) > 1:
        return "product of two time-varying tensors is not linear"
    return None


@rule("Div")
def _stream_numerator(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return "divides by a time-varying tensor" if len(streams) > 1 and streams[1] else None


@rule("Cast")
def _float_cast(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return None if node.attrs.get("to") in FLOAT_TENSOR_TYPES else "casting to a non-float type rounds"


@rule("MaxPool", "GlobalMaxPool")
def _max_pool(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return "max over a window is not linear (see --maxpool for its spiking policies)"


@rule("ReduceMax", "ReduceMin", "ArgMax", "ArgMin", "TopK")
def _order_statistics(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return "order statistics of spikes are not linear"


@rule(
    "Relu",
    "Clip",
    "Max",
    "Min",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Softplus",
    "Gelu",
    "Mish",
    "Floor",
    "Ceil",
    "Round",
    "Abs",
    "Sign",
    "ThresholdedRelu",
    "Exp",
    "Log",
    "Sqrt",
    "Pow",
    "Reciprocal",
    "Erf",
)
def _elementwise_nonlinear(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return f"{node.op} is nonlinear and its transfer function is not a (clipped) ReLU"


@rule("Softmax", "LogSoftmax", "LRN", "LayerNormalization", "InstanceNormalization", "GroupNormalization")
def _normalizing(node: gs.Node, streams: Sequence[bool]) -> str | None:
    return f"{node.op} is nonlinear in its inputs (normalizes over many of them)"
