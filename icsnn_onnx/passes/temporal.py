"""Classify every node by how it behaves over time, and check the network can be spiking.

- *neuron*: an activation site (a chain before neuron insertion, an ``IFNeuron`` after);
  its output is a stream (varies over time steps).
- *body*: reads a stream and is affine in it (:mod:`.rules`); run once per step.
- *invariant*: reads no stream; computed once (under direct coding this hoists the input
  layer's work out of the time loop).
- *structural*: ``Shape``/``Size`` of a stream; computed once from step 1.
- *head*: every op reading a stream with no neuron downstream (the affine output layer as
  much as a final Softmax), and everything after it; applied once to the read-out, the mean
  over T steps of the stream tensors it reads (the *cuts*). Affine ops commute with the mean,
  so this is exact, runs the output layer once instead of T times, and makes the cuts the last
  neurons' outputs, whose residual potentials the read-out compensation adds back.

A neuron here is any stateful node that turns its input into a stream: an IF neuron, and a
MaxPool under the ``gate`` policy. Under rate or Poisson coding the encoded graph inputs are
streams from the start (``stream_inputs``).

A non-affine op with a neuron downstream cannot be made spiking; :class:`CheckSupport`
reports every such node at once, before any calibration or output.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from icsnn_onnx.errors import UnsupportedNode
from icsnn_onnx.passes.encoding import encoded_inputs
from icsnn_onnx.passes.graph_utils import outer_scope_inputs
from icsnn_onnx.passes.program import Program
from icsnn_onnx.passes.rules import STRUCTURAL_OPS, check


@dataclass(frozen=True)
class TemporalPlan:
    neurons: frozenset[str]
    body: tuple[str, ...]  # per-step nodes (neurons included), topological order
    head: tuple[str, ...]
    structural: tuple[str, ...]
    streams: frozenset[str]  # tensor names that vary over time
    cuts: tuple[str, ...]  # stream tensors averaged for the read-out
    units: frozenset[str] = frozenset()  # per-step nodes that are compensated (dense) units


def analyze(
    graph: gs.Graph,
    is_neuron: Callable[[gs.Node], bool],
    rejected: Mapping[str, str] | None = None,
    stream_inputs: frozenset[str] = frozenset(),
    units: Collection[str] = frozenset(),
) -> tuple[TemporalPlan, list[UnsupportedNode]]:
    """Classify the nodes of ``graph`` (sorted in place) and list the non-affine ones between
    neurons that are not already ``units`` (compensated: they run per step on the means of their
    inputs, :mod:`.compensate`)."""
    rejected = rejected or {}
    units = frozenset(units)
    graph.toposort()
    nodes = list(graph.nodes)
    streams: set[str] = set(stream_inputs)
    neurons: set[str] = set()
    structural: list[str] = []
    nonlinear: dict[str, UnsupportedNode] = {}  # stream node → why it is not affine
    stream_nodes: list[gs.Node] = []

    for node in nodes:
        if is_neuron(node):
            neurons.add(node.name)
            stream_nodes.append(node)
            streams.update(t.name for t in node.outputs)
            continue
        flags = [isinstance(t, gs.Variable) and t.name in streams for t in node.inputs]
        implicit = sorted(outer_scope_inputs(node) & streams)
        if node.name in units and (implicit or any(flags)):
            stream_nodes.append(node)
            streams.update(t.name for t in node.outputs)
            continue
        if implicit:
            reason = f"its subgraph reads the time-varying {implicit[:3]}"
            nonlinear[node.name] = UnsupportedNode(node.name, node.op, reason, _output_name(node))
            stream_nodes.append(node)
            streams.update(t.name for t in node.outputs)
            continue
        if not any(flags):
            continue
        if node.op in STRUCTURAL_OPS:
            structural.append(node.name)
            continue
        reason = check(node, flags)
        if reason is not None:
            nonlinear[node.name] = UnsupportedNode(
                node.name, node.op, rejected.get(node.name, reason), _output_name(node)
            )
        stream_nodes.append(node)
        streams.update(t.name for t in node.outputs)

    # a tensor's readers: the nodes listing it, and the control-flow nodes whose subgraphs read it
    implicit_of = {n.name: outer_scope_inputs(n) for n in nodes if _has_subgraph(n)}
    readers: dict[str, list[str]] = {}
    for node in nodes:
        names = {t.name for t in node.inputs} | implicit_of.get(node.name, set())
        for name in names:
            readers.setdefault(name, []).append(node.name)
    feeds_neuron: set[str] = set()
    for node in reversed(nodes):
        for out in node.outputs:
            if any(r in neurons or r in feeds_neuron for r in readers.get(out.name, ())):
                feeds_neuron.add(node.name)
                break

    stream_names = {n.name for n in stream_nodes}
    blocked = [node for name, node in nonlinear.items() if name in feeds_neuron]

    head: set[str] = set()
    head_tensors: set[str] = set()
    for node in nodes:
        is_stream_op = node.name in stream_names and node.name not in neurons
        starts_head = is_stream_op and node.name not in feeds_neuron
        reads = {t.name for t in node.inputs} | implicit_of.get(node.name, set())
        if starts_head or reads & head_tensors:
            head.add(node.name)
            head_tensors.update(t.name for t in node.outputs)

    cuts: list[str] = []
    for node in nodes:
        if node.name in head:
            reads = [t.name for t in node.inputs] + sorted(implicit_of.get(node.name, ()))
            cuts += [name for name in reads if name in streams and name not in head_tensors]
    cuts += [t.name for t in graph.outputs if t.name in streams and t.name not in head_tensors]
    plan = TemporalPlan(
        neurons=frozenset(neurons),
        body=tuple(n.name for n in stream_nodes if n.name not in head),
        head=tuple(n.name for n in nodes if n.name in head),
        structural=tuple(n for n in structural if n not in head),
        streams=frozenset(streams - head_tensors),
        cuts=tuple(dict.fromkeys(cuts)),
        units=frozenset(n.name for n in stream_nodes if n.name in units and n.name not in head),
    )
    return plan, blocked


def _has_subgraph(node: gs.Node) -> bool:
    return any(isinstance(v, gs.Graph) for v in node.attrs.values())


def site_node_names(program: Program) -> frozenset[str]:
    return frozenset(name for site in program.sites.values() for name in site.nodes)


def analyze_program(program: Program) -> tuple[TemporalPlan, list[UnsupportedNode]]:
    """:func:`analyze` for a program before neuron insertion: its activation sites and MaxPool
    gates are the neurons, the inputs its encoding makes time-varying are streams."""
    in_sites = site_node_names(program)
    return analyze(
        program.graph,
        lambda n: n.name in in_sites or n.name in program.gates,
        {**program.side, **program.rejected},
        encoded_inputs(program.graph, program.options.encoding),
        program.unit_nodes,
    )


def _output_name(node: gs.Node) -> str:
    return node.outputs[0].name if node.outputs else ""


def nonlinear_nodes(program: Program) -> list[UnsupportedNode]:
    """Why a model has no activation site: its elementwise nonlinearities that are not ReLU-like
    (``program.rejected``), or else every op that is not affine in its data input."""
    graph = program.graph
    found = [
        UnsupportedNode(n.name, n.op, program.rejected[n.name], _output_name(n))
        for n in graph.nodes
        if n.name in program.rejected
    ]
    if found:
        return found
    branches = [
        UnsupportedNode(n.name, n.op, branch_hint(graph, n), _output_name(n))
        for n in graph.nodes
        if n.op == "If" and _has_subgraph(n)
    ]
    if branches:  # the network sits in the branches: they fold where the condition's inputs are fixed
        return branches
    return [
        UnsupportedNode(n.name, n.op, reason, _output_name(n))
        for n in graph.nodes
        if n.inputs and (reason := check(n, [True] + [False] * (len(n.inputs) - 1))) is not None
    ]


def branch_hint(graph: gs.Graph, node: gs.Node) -> str:
    """Why an If keeps a network from converting, and which inputs to fix to fold it."""
    inputs = {t.name for t in graph.inputs}
    seen, todo, found = set(), [node.inputs[0]], set()
    while todo:
        tensor = todo.pop()
        if tensor.name in inputs:
            found.add(tensor.name)
        for producer in tensor.inputs:
            if producer.name not in seen:
                seen.add(producer.name)
                todo.extend(producer.inputs)
    which = f" reads the input(s) {sorted(found)}" if found else " is computed at run time"
    fix = ": fix them with --input NAME=VALUE and the If folds to its branch" if found else ""
    return f"its branches (computed once, densely) hold the network and its condition{which}{fix}"
