"""Which tensors are the network's data: what reaches a synaptic layer as data.

An activation is worth a neuron where its spikes drive synapses. A clamp on a normaliser's count,
``clamp(Σ mask, min=1e-9)``, reaches the rest only as a divisor; a square summed into a variance
only under a square root or a reciprocal (a LayerNorm's scale); a comparison makes a mask; a
``Reshape``'s shape input is shape arithmetic: such side computations stay dense
(:mod:`.activations`). An activation after the last synaptic layer (a Sigmoid on the output, the
exponentials of a softmax) is computed once on the read-out, exactly. Per op, the inputs that are
*not* data are listed (:data:`SIDE_INPUTS`); every other input of every op is data. Synaptic
layers (Conv, Gemm, MatMul, the recurrent layers and their quantized forms) are where data ends
up; a graph with none (a bare activation) has its outputs instead.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from icsnn_onnx.passes.graph_utils import is_empty, outer_scope_inputs

#: Where activations' spikes are consumed as data: layers with weights.
SYNAPTIC = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Einsum",
        "LSTM",
        "GRU",
        "RNN",
        "ConvInteger",
        "MatMulInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeLSTM",
    }
)

_ALL = frozenset(range(64))

#: Per op, the inputs that are no data: divisors, exponents, conditions, bounds, shapes, indices,
#: axes, scales. Comparisons and logic make masks: none of their inputs is data.
SIDE_INPUTS: dict[str, frozenset[int]] = {
    "Div": frozenset({1}),
    "Pow": frozenset({1}),
    "Sqrt": frozenset({0}),  # a root is a scale (a norm, a standard deviation)
    "Reciprocal": frozenset({0}),
    "Mod": frozenset({1}),
    "Where": frozenset({0}),
    "If": frozenset({0}),  # the condition
    "Loop": frozenset({0, 1}),  # trip count, condition
    "Clip": frozenset({1, 2}),
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 2, 3}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "GatherND": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Split": frozenset({1}),
    "CumSum": frozenset({1}),
    "TopK": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "ReduceProd": frozenset({1}),
    "ReduceL1": frozenset({1}),
    "ReduceL2": frozenset({1}),
    "ReduceSumSquare": frozenset({1}),
    "ReduceLogSumExp": frozenset({1}),
    "Conv": frozenset({1, 2}),
    "ConvTranspose": frozenset({1, 2}),
    "LSTM": frozenset({1, 2, 3, 4}),
    "GRU": frozenset({1, 2, 3, 4}),
    "RNN": frozenset({1, 2, 3, 4}),
    "BatchNormalization": frozenset({1, 2, 3, 4}),
    "LayerNormalization": frozenset({1, 2}),
    "InstanceNormalization": frozenset({1, 2}),
    "GroupNormalization": frozenset({1, 2}),
    **{
        op: _ALL
        for op in (
            "Shape",
            "Size",
            "ConstantOfShape",
            "Range",
            "Equal",
            "Greater",
            "GreaterOrEqual",
            "Less",
            "LessOrEqual",
            "Not",
            "And",
            "Or",
            "Xor",
            "IsNaN",
            "IsInf",
            "ArgMax",
            "ArgMin",
            "NonZero",
            "OneHot",
        )
    },
}


def data_tensors(graph: gs.Graph, to_outputs: bool = False) -> frozenset[str]:
    """Names of the tensors a synaptic layer reads as data, directly or through ops that pass
    them on as data (``graph`` is sorted in place); with ``to_outputs``, or in a graph without
    synaptic layers, what reaches its outputs too."""
    graph.toposort()
    synaptic = any(n.op in SYNAPTIC for n in graph.nodes)
    data = {t.name for t in graph.outputs} if to_outputs or not synaptic else set()
    for node in reversed(graph.nodes):
        side = SIDE_INPUTS.get(node.op, frozenset())
        if node.op in SYNAPTIC or any(t.name in data for t in node.outputs):
            data.update(
                t.name
                for i, t in enumerate(node.inputs)
                if i not in side and not is_empty(t) and isinstance(t, gs.Variable)
            )
            data.update(outer_scope_inputs(node))  # what an If or Loop body reads around it
    return frozenset(data)


#: Ops whose output depends on their input's shape, not its values.
SHAPE_OF = frozenset({"Shape", "Size"})


def sample_dependent(graph: gs.Graph) -> frozenset[str]:
    """Names of the tensors whose values depend on a graph input's values (``graph`` is sorted
    in place): not a scale computed from a shape (``sqrt(head size)``), not a constant."""
    graph.toposort()
    constants = {t.name for t in graph.inputs if isinstance(t, gs.Constant)}
    found = {t.name for t in graph.inputs if t.name not in constants}
    for node in graph.nodes:
        if node.op in SHAPE_OF:
            continue
        reads = [t.name for t in node.inputs if not is_empty(t)] + list(outer_scope_inputs(node))
        if any(name in found for name in reads):
            found.update(t.name for t in node.outputs)
    return frozenset(found)
