"""What is not affine between neurons becomes a compensated unit; what cannot be, is refused.

Between neurons every op runs once per step, and the read-out averages; an op ``g`` that is
affine in its time-varying inputs commutes with the average (docs/method.md eq. 3). Any other
op — a product of two activations, Softmax, LayerNorm, a division, an LSTM, a quantizer — is
*compensated*: at step t it is computed on the running means of its time-varying inputs, and
emits ``t·g(x̄_t) − (t−1)·g(x̄_{t−1})``, so the mean of what it emitted over the first t steps is
``g(x̄_t)`` exactly, at every t (the expectation compensation of Huang et al., ACM MM 2024;
docs/method.md §15). That is dense work per step, not spikes: the report counts it so.

An integer tensor cannot carry a difference of means, so a unit grows over every node that reads
one of its integer outputs (a ``DynamicQuantizeLinear`` and the ``ConvInteger`` reading its
codes are one unit), and over every node on a path between two of its nodes (a unit is computed
at once). Control flow whose subgraph reads time-varying tensors (an ``If`` on a shape, a ``Loop``) is a
unit like any other: its subgraph reads the means of those tensors (fix the inputs its condition
depends on with ``--input`` where it can fold instead: then what it holds spikes). Refused, every
node named at once: random ops (a mean of draws is no draw) and ops ONNX Runtime has no kernel
for (a custom domain's).
"""

from __future__ import annotations

import json

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.calibration.kernels import has_kernel
from icsnn_onnx.contract import ACTIVATIONS_KEY
from icsnn_onnx.errors import ConversionError, UnsupportedNode, UnsupportedOperatorError
from icsnn_onnx.passes import Pass, PassResult, ensure
from icsnn_onnx.passes.data_path import data_tensors, sample_dependent
from icsnn_onnx.passes.program import CompensatedUnit, Program
from icsnn_onnx.passes.regions import find_regions, is_affine
from icsnn_onnx.passes.temporal import TemporalPlan, analyze_program, nonlinear_nodes, site_node_names

#: Ops whose value is a draw: no mean over steps stands for it.
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)


def refusal(node: gs.Node, streams: frozenset[str]) -> str | None:
    """Why ``node`` cannot be a compensated unit (``None``: it can)."""
    if node.op in RANDOM_OPS:
        return "a random op: the mean of its draws over the steps is not a draw"
    if not has_kernel(node.domain or "", node.op):
        return f"ONNX Runtime has no {node.domain or 'ai.onnx'}::{node.op} to compute it at each step"
    return None


def _is_float(tensor: gs.Tensor) -> bool:
    """Float, or of a type shape inference could not tell."""
    if tensor.dtype is None:
        return True
    try:
        return np.dtype(tensor.dtype).kind == "f"
    except TypeError:  # an ONNX type numpy lacks (bfloat16): a float
        return True


def group_units(graph: gs.Graph, plan: TemporalPlan, nodes: list[str]) -> list[list[str]]:
    """``nodes`` (non-affine, between neurons) in units: joined over integer tensors between
    them, each grown over the readers of its integer outputs and over the nodes on a path
    between two of its own (topological order within each unit)."""
    by_name = {n.name: n for n in graph.nodes}
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    body = set(plan.body)
    parent = {n: n for n in nodes}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def join(a: str, b: str) -> None:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        parent[find(a)] = find(b)

    changed = True
    while changed:
        changed = False
        for name in list(parent):
            for out in by_name[name].outputs:
                if _is_float(out):
                    continue
                for reader in out.outputs:
                    if reader.name in body and (reader.name not in parent or find(reader.name) != find(name)):
                        join(reader.name, name)
                        changed = True
        groups: dict[str, set[str]] = {}
        for name in parent:
            groups.setdefault(find(name), set()).add(name)
        for members in groups.values():
            between = _between(members, by_name, body) - members
            for name in between:
                join(name, next(iter(members)))
                changed = True
    groups = {}
    for name in parent:
        groups.setdefault(find(name), set()).add(name)
    return sorted((sorted(g, key=order.__getitem__) for g in groups.values()), key=lambda g: order[g[0]])


def _between(members: set[str], by_name: dict[str, gs.Node], body: set[str]) -> set[str]:
    """Body nodes on a path from one member to another (descendants ∩ ancestors)."""
    down: set[str] = set()
    todo = list(members)
    while todo:
        for out in by_name[todo.pop()].outputs:
            for reader in out.outputs:
                if reader.name in body and reader.name not in down:
                    down.add(reader.name)
                    todo.append(reader.name)
    up: set[str] = set()
    todo = list(members)
    while todo:
        for tensor in by_name[todo.pop()].inputs:
            for producer in tensor.inputs:
                if producer.name in body and producer.name not in up:
                    up.add(producer.name)
                    todo.append(producer.name)
    return down & up


def activation_nodes(program: Program) -> tuple[int, int]:
    """(activation nodes, those in neuron sites): the nonlinear nodes of the graph's
    single-input elementwise regions that take data to a synaptic layer (:mod:`.data_path`):
    not side computations (a LayerNorm's ``1/sqrt(var)`` reads no data, a scale
    ``sqrt(head size)`` comes from a shape), not the read-out's (a final softmax, computed once)."""
    in_sites = site_node_names(program)
    data = data_tensors(program.graph) & sample_dependent(program.graph)
    found = {
        node.name
        for region in find_regions(program.graph)
        for block in region.blocks
        for node in block.nodes
        if not is_affine(node)
        and node.name not in program.side
        and any(o.name in data for o in node.outputs)
        and any(i.name in data for i in node.inputs)
    }
    return len(found), len(found & in_sites)


class CheckSupport(Pass):
    """Every non-affine node between neurons becomes a compensated unit (``program.units``), or,
    where none can be, is refused: every such node listed at once, before any calibration or
    output. A model with no activation to make a neuron is refused too (nothing would spike)."""

    def ensures(self, program: Program) -> None:
        _, blocked = analyze_program(program)
        ensure(not blocked, self.name, f"non-affine nodes between neurons left: {[b.name for b in blocked]}")

    def call(self, program: Program) -> PassResult:
        if not program.sites:
            nodes = nonlinear_nodes(program)
            if nodes:
                raise UnsupportedOperatorError(nodes, headline="no activation to make a spiking neuron")
            raise ConversionError("the model has no nonlinear activation: there is nothing to make spiking")
        refused = plan_units(program)
        if refused:
            raise UnsupportedOperatorError(refused)
        total, spiking = activation_nodes(program)
        program.metadata[ACTIVATIONS_KEY] = json.dumps({"nodes": total, "spiking": spiking})
        return PassResult(program, bool(program.units))


def plan_units(program: Program) -> list[UnsupportedNode]:
    """Fill ``program.units`` with the compensated units between its neurons; return the nodes
    that cannot be units (nothing is raised: ``inspect`` reports them)."""
    program.units.clear()
    reasons: dict[str, str] = {}
    refused: dict[str, UnsupportedNode] = {}
    for _ in range(8):  # a unit's integer readers may bring new non-affine nodes into view
        plan, blocked = analyze_program(program)
        blocked = [b for b in blocked if b.name not in refused]
        if not blocked:
            break
        by_name = {n.name: n for n in program.graph.nodes}
        for b in blocked:
            why = refusal(by_name[b.name], plan.streams)
            if why is not None:
                refused[b.name] = UnsupportedNode(b.name, b.op_type, why, b.output)
        reasons.update({b.name: b.reason for b in blocked if b.name not in refused})
        known = [n for unit in program.units.values() for n in unit.nodes]
        fresh = [b.name for b in blocked if b.name not in refused]
        if not fresh:
            break
        groups = group_units(program.graph, plan, [*known, *fresh])
        program.units.clear()
        for nodes in groups:
            if any(n in refused for n in nodes):
                continue  # grown over a refused node: the refusal says it
            first = nodes[0]
            program.units[first] = CompensatedUnit(
                first,
                tuple(nodes),
                tuple(by_name[n].op for n in nodes),
                reasons.get(first, next((reasons[n] for n in nodes if n in reasons), "")),
            )
    return list(refused.values())
