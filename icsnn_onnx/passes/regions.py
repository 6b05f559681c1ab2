"""Single-input elementwise regions: where activations hide, whatever ops spell them.

A *region* is a maximal connected set of scalar elementwise nodes (ops of
:data:`icsnn_onnx.elementwise.NUMPY_OPS`, constants uniform) that reads one non-constant tensor
``x`` from outside and whose only tensor read outside it (or returned by the graph) is one
tensor ``y``: then ``y = f(x)`` elementwise, for a scalar ``f`` that can be probed numerically.
Chains are regions, and so are DAGs such as ``(x + |x|)/2``, ``x·(x > 0)``,
``Where(x > 0, x, 0)``, ``Relu(x) − Relu(x − λ)`` or the straight-through quantizer
``x_c + (q(x_c) − x_c)`` torch exports (``.detach()`` leaves no node).

A region is a series of *blocks*, split at its cut tensors (those every path from ``x`` to
``y`` passes through): a chain's blocks are its nodes, a diamond is one block. Activation
sites are spans of consecutive blocks (:mod:`.activations`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from icsnn_onnx.neurons import ElementwiseFunction
from icsnn_onnx.neurons.equations import Equation
from icsnn_onnx.neurons.function import X, Y
from icsnn_onnx.ops.elementwise import AFFINE_ELEMENTWISE, FLOAT_TENSOR_TYPES, NUMPY_OPS, evaluate
from icsnn_onnx.passes.graph_utils import is_empty, is_graph_output

# Casts a transfer function may pass through: to floats (values kept), to booleans (masks) and
# to wide integers (truncation, exact on the probing grid).
_CASTABLE = FLOAT_TENSOR_TYPES | {onnx.TensorProto.BOOL, onnx.TensorProto.INT32, onnx.TensorProto.INT64}


def operands(node: gs.Node) -> list[gs.Variable] | None:
    """The non-constant inputs of a scalar elementwise node, or ``None`` if it is not one.

    Constants must be uniform (one value, broadcast); a non-scalar one only where the node's
    output keeps its variable input's shape, so the region stays a function of one element.
    """
    if node.op not in NUMPY_OPS or (node.domain or "") not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    if node.op == "Cast" and node.attrs.get("to") not in _CASTABLE:
        return None
    variables = [t for t in node.inputs if isinstance(t, gs.Variable) and not is_empty(t)]
    if not variables:
        return None
    for t in node.inputs:
        if not isinstance(t, gs.Constant):
            continue
        value = np.asarray(t.values)
        if value.size == 0 or not np.all(value == value.flat[0]):
            return None
        if value.size > 1 and not _keeps_shape(node, variables, value.ndim):
            return None
    return variables


def _keeps_shape(node: gs.Node, variables: list[gs.Variable], rank: int) -> bool:
    out = node.outputs[0].shape
    return out is not None and len(out) >= rank and all(v.shape == out for v in variables)


def is_affine(node: gs.Node) -> bool:
    """Affine in its non-constant inputs (``Mul``/``Div`` of two of them is not)."""
    if node.op not in AFFINE_ELEMENTWISE:
        return False
    if node.op == "Cast":
        return node.attrs.get("to") in FLOAT_TENSOR_TYPES
    return node.op not in ("Mul", "Div") or len(operands(node) or []) < 2


@dataclass(frozen=True)
class Block:
    """Nodes (topological order) between two consecutive cut tensors of a region."""

    nodes: tuple[gs.Node, ...]
    input: gs.Variable
    output: gs.Variable

    @property
    def affine(self) -> bool:
        return all(is_affine(n) for n in self.nodes)


@dataclass(frozen=True)
class Region:
    """``output = f(input)`` elementwise, as a series of blocks."""

    blocks: tuple[Block, ...]

    @property
    def input(self) -> gs.Variable:
        return self.blocks[0].input

    @property
    def output(self) -> gs.Variable:
        return self.blocks[-1].output


def find_regions(
    graph: gs.Graph, within: Sequence[gs.Node] | None = None, chains: bool = False
) -> list[Region]:
    """Every maximal single-input, single-output elementwise region of ``graph`` (of the nodes
    ``within``, in topological order, if given; only chains of one-operand nodes if ``chains``).

    Members are grouped by the one outside tensor they derive from and by connectivity; a group
    read from outside at more than one tensor is split there (those tensors become inputs of the
    regions after them), until every group has one exit.
    """
    if within is None:
        graph.toposort()
    nodes = list(graph.nodes if within is None else within)
    variables = {
        id(n): ops for n in nodes if (ops := operands(n)) is not None and (not chains or len(ops) == 1)
    }
    boundary: set[str] = set()
    while True:
        groups = _groups(nodes, variables, boundary)
        split = False
        regions = []
        for members in groups:
            ids = {id(m) for m in members}
            exits = [
                m.outputs[0]
                for m in members
                if is_graph_output(graph, m.outputs[0]) or any(id(c) not in ids for c in m.outputs[0].outputs)
            ]
            if len(exits) > 1:
                boundary |= _split_points(members, exits, boundary)
                split = True
            elif exits:
                region = _series(members, variables)
                if _is_float(region.input):  # integer regions are shape arithmetic, not activations
                    regions.append(region)
        if not split:
            return regions


def _is_float(tensor: gs.Tensor) -> bool:
    """Float, or of unknown type (shape inference could not tell)."""
    return tensor.dtype is None or np.dtype(tensor.dtype).kind == "f"


def _split_points(members: list[gs.Node], exits: list[gs.Variable], boundary: set[str]) -> set[str]:
    """Where a group read outside at several tensors is cut: its earlier exits and its tensors
    read more than once (so sibling branches part); single nodes if that cuts nothing new."""
    fanned = {m.outputs[0].name for m in members if len(m.outputs[0].outputs) > 1}
    new = ({e.name for e in exits[:-1]} | fanned) - boundary
    return new or {m.outputs[0].name for m in members[:-1]}


def _groups(
    nodes: list[gs.Node], variables: dict[int, list[gs.Variable]], boundary: set[str]
) -> list[list[gs.Node]]:
    """Members (topological order) connected through their own tensors, by the one outside
    tensor each derives from."""
    root: dict[str, str] = {}  # member output → the outside tensor it derives from
    parent: dict[int, int] = {}  # union-find over members

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer_of: dict[str, gs.Node] = {}
    members: list[gs.Node] = []
    for node in nodes:
        ops = variables.get(id(node))
        if ops is None:
            continue
        roots = {t.name if t.name in boundary else root.get(t.name, t.name) for t in ops}
        if len(roots) != 1:
            continue  # a function of two outside tensors (e.g. a residual Add): not elementwise of one
        root[node.outputs[0].name] = roots.pop()
        parent[id(node)] = id(node)
        members.append(node)
        producer_of[node.outputs[0].name] = node
        for t in ops:
            src = producer_of.get(t.name)
            if src is not None and t.name not in boundary:
                parent[find(id(src))] = find(id(node))
    grouped: dict[int, list[gs.Node]] = {}
    for node in members:
        grouped.setdefault(find(id(node)), []).append(node)
    return list(grouped.values())


def _series(members: list[gs.Node], variables: dict[int, list[gs.Variable]]) -> Region:
    """Split a region's members at its cut tensors: after node i, the tensor it writes is a cut
    when every later member reads only it or tensors written later (exact in any topological
    order: a tensor every path passes through has only ancestors before it)."""
    position = {m.outputs[0].name: i for i, m in enumerate(members)}
    source = next(t for t in variables[id(members[0])] if t.name not in position)
    # earliest_read_after[i]: the first position a member after i reads (-1: the region input).
    earliest_read_after = [len(members)] * len(members)
    low = len(members)
    for i in range(len(members) - 1, -1, -1):
        earliest_read_after[i] = low
        reads = [position.get(t.name, -1) for t in variables[id(members[i])]]
        low = min(low, *reads)
    blocks, start, current = [], 0, source
    for i, m in enumerate(members):
        last = i == len(members) - 1
        if last or earliest_read_after[i] >= i:
            blocks.append(Block(tuple(members[start : i + 1]), current, m.outputs[0]))
            start, current = i + 1, m.outputs[0]
    return Region(tuple(blocks))


def transfer_of(blocks: tuple[Block, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """The scalar function consecutive blocks compute, as a numpy function of a 1-D grid."""

    def f(x: np.ndarray) -> np.ndarray:
        values: dict[str, np.ndarray] = {blocks[0].input.name: x}
        for block in blocks:
            for node in block.nodes:
                args: list[np.ndarray | None] = []
                for t in node.inputs:
                    if is_empty(t):
                        args.append(None)
                    elif isinstance(t, gs.Constant):
                        value = np.asarray(t.values).reshape(-1)[0]
                        args.append(np.asarray(value, np.float64 if value.dtype.kind == "f" else value.dtype))
                    else:
                        args.append(values[t.name])
                out = evaluate(node.op, args, node.attrs)
                values[node.outputs[0].name] = out.astype(np.float64) if out.dtype.kind == "f" else out
        return np.broadcast_to(values[blocks[-1].output.name].astype(np.float64), x.shape)

    return f


def function_of(blocks: tuple[Block, ...], description: str = "") -> ElementwiseFunction:
    """The function consecutive blocks compute, as an equation table of their own nodes: the
    span's input is ``x``, its output ``y``, each uniform constant a scalar of its own dtype."""
    names = {blocks[0].input.name: X, blocks[-1].output.name: Y}
    constants: list[tuple[str, np.ndarray]] = []
    equations = []
    for block in blocks:
        for node in block.nodes:
            args = []
            for t in node.inputs:
                if is_empty(t):
                    args.append("")
                elif isinstance(t, gs.Constant):
                    name = f"c{len(constants)}"
                    constants.append((name, np.asarray(t.values).reshape(-1)[0].copy()))
                    args.append(name)
                else:
                    args.append(names[t.name])
            out = node.outputs[0].name
            names.setdefault(out, f"t{len(names)}")
            attrs = tuple(sorted((k, _attr(v)) for k, v in node.attrs.items()))
            equations.append(Equation(names[out], node.op, tuple(args), attrs))
    return ElementwiseFunction(tuple(equations), tuple(constants), description)


def _attr(value: object) -> object:
    """An attribute as an ONNX attribute value (a string for graphsurgeon's str-like values)."""
    return value.decode() if isinstance(value, bytes) else value
