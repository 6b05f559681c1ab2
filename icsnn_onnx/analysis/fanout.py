"""Where every spike goes, and how many synaptic operations it costs.

A spike of a neuron (or of a rate/Poisson-encoded input) travels through data movement and
linear structure — pooling, residual Add, Concat, Slice, Flatten, Reshape, scaling — until it
reaches a synaptic layer (Conv, Gemm, MatMul with constant weights), or a neuron's membrane
directly (a residual connection, a MaxPool gate's comparison). On event-driven hardware each
spike is routed on its own, so what one spike costs is exact and static: the number of weights
it is added with, summed over every path it takes — sinabs' ``synops``, per spike rather than
per input element (a 2×2 sum-pool of three spikes is three events into the next layer, not one).

:func:`spike_routes` computes, for every (source, destination) pair, that cost for every
element of one sample's spike tensor: the destination's fan-out (``fanout`` of
:mod:`.synapses`, borders and strides exact) pulled back through the ops in between, each op by
its transpose with unit weights (a pooling window sums, a Concat slices, an Expand sums its
copies). Selection ops (Reshape, Slice, Concat, Pad, Gather, Transpose, …) are pulled back
exactly by running them on an index tensor. SOPs of a batch are then ``Σ spike counts × fan-out``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from icsnn_onnx.analysis.dense import ECM
from icsnn_onnx.analysis.synapses import SYNAPTIC_OPS, Synapse, fanout
from icsnn_onnx.contract import PER_STEP_HEAD, base_name, is_readout_name, parse_step_name
from icsnn_onnx.neurons import kind_of
from icsnn_onnx.ops.windows import attributes, resolve_pads

#: Ops a spike passes through with its value scaled, not multiplied by another spike.
ELEMENTWISE = ("Identity", "Cast", "CastLike", "Dropout", "Neg", "Add", "Sub", "Sum", "Mul", "Div")
#: Ops that move elements without arithmetic: pulled back through an index tensor.
SELECTION = (
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Slice",
    "Concat",
    "Pad",
    "Gather",
    "Expand",
    "Tile",
    "DepthToSpace",
    "SpaceToDepth",
    "Split",
)
POOLING = ("AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum")

MEMBRANE = "membrane"  # a route into a neuron's membrane: one accumulate per spike
SYNAPSE = "synapse"
OTHER = "other"  # an op the analysis does not see through: counted as one operation per spike
FORWARD = "forward"  # a data-dependent selection: the spikes it lets through are a new source


@dataclass(frozen=True)
class Route:
    """Spikes of ``source`` reaching ``target``: per element of one sample's spike tensor, the
    operations one spike there costs at ``target``."""

    source: str
    target: str  # a synapse's name, a neuron layer's name, or "<op type> <node>"
    kind: str  # SYNAPSE, MEMBRANE or OTHER
    fanout: np.ndarray


@dataclass(frozen=True)
class _Terminal:
    target: str
    kind: str
    tensor: str  # the destination's input the spikes arrive on
    synapse: Synapse | None = None


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.order = {id(n): i for i, n in enumerate(self.nodes)}
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.output:
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.nodes:
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
        self.outputs = {o.name for o in graph.output}
        self.tensors = {o for n in self.nodes for o in n.output} | {i.name for i in graph.input}


Paths = dict[str, tuple[list[onnx.NodeProto], list[_Terminal]]]


def spike_paths(
    model: onnx.ModelProto, sources: Mapping[str, str], synapses: Sequence[Synapse]
) -> tuple[Paths, dict[str, str]]:
    """Per source (name → its step-1 spike tensor): the ops its spikes pass through, in graph
    order, and the destinations they reach. A selection that depends on the data (a MaxPool
    gate's Gather of the winning unit) forwards some spikes and not others: its output is a
    source of its own, returned with the paths (name → tensor), its spikes counted where they
    come out."""
    g = _Graph(model)
    by_node = {s.node: s for s in synapses}
    found: Paths = {}
    forwarded: dict[str, str] = {}
    pending = dict(sources)
    while pending:
        source, start = pending.popitem()
        passed: dict[int, onnx.NodeProto] = {}
        terminals: dict[tuple[str, str], _Terminal] = {}
        frontier, seen = [start], {start}
        while frontier:
            tensor = frontier.pop()
            for node, i in g.consumers.get(tensor, []):
                role = _role(node, i, g, by_node)
                if role == "pass":
                    passed[id(node)] = node
                    for out in node.output:
                        if out and out not in seen:
                            seen.add(out)
                            frontier.append(out)
                elif role == FORWARD:
                    name = f"{base_name(node.name)} (forwarded spikes)"
                    if name not in found and name not in pending:
                        pending[name] = forwarded[name] = node.output[0]
                elif role is not None:
                    kind, target = role
                    terminals[(target, tensor)] = _Terminal(target, kind, tensor, by_node.get(node.name))
        ordered = sorted(passed.values(), key=lambda n: g.order[id(n)])
        found[source] = (ordered, list(terminals.values()))
    return found, forwarded


def _role(
    node: onnx.NodeProto, index: int, g: _Graph, synapses: Mapping[str, Synapse]
) -> str | tuple[str, str] | None:
    """What ``node`` does with spikes on its input ``index``: "pass" them on, end a route
    (kind, target), or ``None`` (the read-out, which reads the network and is counted apart)."""
    if node.op_type == "Loop" or PER_STEP_HEAD in node.name or is_readout_name(node.name, g.tensors):
        return None
    step = parse_step_name(node.name)
    if step is not None and step[1] != 1:  # a later step reading step 1: state (a gate's running sum)
        return None
    base = base_name(node.name)
    if ECM in base:  # a compensated unit's step: its dense work is counted whole (analysis/dense.py)
        return None
    kind = kind_of(node.domain, node.op_type)
    if kind is not None:  # a neuron step: spikes into its current are accumulated into its membrane
        return (MEMBRANE, base) if index == kind.inputs.index(kind.current) else None
    if node.op_type in SYNAPTIC_OPS and node.name in synapses:
        return (SYNAPSE, synapses[node.name].name) if index == 0 else (OTHER, f"{node.op_type} {base}")
    if node.op_type in ELEMENTWISE or node.op_type in POOLING:
        return "pass"
    if node.op_type == "Gather" and index == 0 and node.input[1] not in g.constants:
        return FORWARD
    if node.op_type in SELECTION and (index == 0 or node.op_type == "Concat"):
        return "pass"
    return (OTHER, f"{node.op_type} {base}")


def probe_tensors(paths: Paths) -> list[str]:
    """The tensors whose shapes the pull-back needs (read from one probe run)."""
    names: list[str] = []
    for nodes, terminals in paths.values():
        for node in nodes:
            names += [n for n in (*node.input, *node.output) if n]
        names += [t.tensor for t in terminals]
    return list(dict.fromkeys(names))


def spike_routes(
    model: onnx.ModelProto,
    sources: Mapping[str, str],
    paths: Paths,
    probe: Mapping[str, np.ndarray],
) -> list[Route]:
    """Every route's per-element cost, from the probe run's tensors (one batch, any size)."""
    g = _Graph(model)
    values = {**g.constants, **probe}
    routes = []
    for source, (nodes, terminals) in paths.items():
        start = sources[source]  # the given sources and the forwarded ones
        for terminal in terminals:
            shape = np.shape(values[terminal.tensor])
            if terminal.synapse is not None:
                cost = np.broadcast_to(fanout(terminal.synapse, shape), shape[1:])[None]
                cost = np.broadcast_to(cost, shape).astype(np.float64)
            else:
                cost = np.ones(shape, np.float64)
            pulled = {terminal.tensor: cost}
            for node in reversed(nodes):
                _pull(node, pulled, values)
            if start in pulled:
                routes.append(Route(source, terminal.target, terminal.kind, pulled[start][0].copy()))
    return routes


def _pull(node: onnx.NodeProto, pulled: dict[str, np.ndarray], values: Mapping[str, np.ndarray]) -> None:
    """Add to ``pulled`` the cost at ``node``'s inputs of the cost at its outputs."""
    grads = [pulled.get(o) for o in node.output]
    if all(g is None for g in grads):
        return
    for i, name in enumerate(node.input):
        if (
            not name
            or name not in values
            or (node.op_type in SELECTION and i > 0 and node.op_type != "Concat")
        ):
            continue
        shape = np.shape(values[name])
        grad = _pull_one(node, i, grads, shape, values)
        if grad is not None:
            pulled[name] = pulled[name] + grad if name in pulled else grad


def _pull_one(
    node: onnx.NodeProto,
    index: int,
    grads: list[np.ndarray | None],
    shape: tuple[int, ...],
    values: Mapping[str, np.ndarray],
) -> np.ndarray | None:
    grad = grads[0]
    op = node.op_type
    if op in ELEMENTWISE:
        return None if grad is None else _unbroadcast(grad, shape)
    if op == "AveragePool":
        return _pull_pool(node, grad, shape)
    if op in POOLING:
        return np.broadcast_to(_keep_dims(node, grad, shape), shape).astype(np.float64)
    return _pull_selection(node, index, grads, shape, values)


def _unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes numpy broadcast ``shape`` along."""
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(a for a, (g, s) in enumerate(zip(grad.shape, shape, strict=True)) if s == 1 and g != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


def _keep_dims(node: onnx.NodeProto, grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A reduction's output gradient with its reduced axes restored as size 1."""
    if grad.ndim == len(shape):
        return grad
    attrs = attributes(node)
    axes = attrs.get("axes")
    if axes is None:
        axes = [a for a in range(len(shape)) if a not in range(grad.ndim)]
    for axis in sorted(a % len(shape) for a in axes):
        grad = np.expand_dims(grad, axis)
    return grad


def _pull_pool(node: onnx.NodeProto, grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The transpose of a sum-pool: each input element gets the cost of every window it is in."""
    attrs = attributes(node)
    kernel = list(attrs["kernel_shape"])
    n = len(kernel)
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    pads = resolve_pads(attrs, shape[2:], kernel, strides, dilations)[:n]  # the begin pads
    out = np.zeros(shape, np.float64)
    for offsets in itertools.product(*(range(k) for k in kernel)):
        src, dst = [slice(None), slice(None)], [slice(None), slice(None)]
        for axis, j in enumerate(offsets):
            size, outputs, s = shape[2 + axis], grad.shape[2 + axis], strides[axis]
            off = j * dilations[axis] - pads[axis]
            first = -(off // s) if off < 0 else 0  # the first window this offset lands inside
            last = min(outputs - 1, (size - 1 - off) // s)
            if last < first:
                break
            src.append(slice(first, last + 1))
            dst.append(slice(first * s + off, last * s + off + 1, s))
        else:
            out[tuple(dst)] += grad[tuple(src)]
    return out


def _pull_selection(
    node: onnx.NodeProto,
    index: int,
    grads: list[np.ndarray | None],
    shape: tuple[int, ...],
    values: Mapping[str, np.ndarray],
) -> np.ndarray:
    """Run the op on 1 + the flat position of every element of input ``index`` (0 elsewhere);
    every output element then names the input element it came from."""
    feeds = {}
    for i, name in enumerate(node.input):
        if not name:
            continue
        value = np.asarray(values[name])
        if i == index:
            feeds[name] = np.arange(1, value.size + 1, dtype=np.float64).reshape(value.shape)
        elif node.op_type == "Concat":
            feeds[name] = np.zeros(value.shape, np.float64)
        else:
            feeds[name] = value
    results = ReferenceEvaluator(node).run(None, feeds)
    out = np.zeros(int(np.prod(shape)), np.float64)
    for result, grad in zip(results, grads, strict=False):
        if grad is None:
            continue
        where = np.asarray(result).reshape(-1).astype(np.int64)
        hit = where > 0
        np.add.at(out, where[hit] - 1, np.broadcast_to(grad, np.shape(result)).reshape(-1)[hit])
    return out.reshape(shape)
