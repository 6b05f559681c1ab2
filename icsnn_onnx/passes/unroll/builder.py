"""The emitters' common state and node-building helpers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.passes.graph_utils import detach, outer_scope_inputs
from icsnn_onnx.passes.program import InputEncoder, TransferFunction
from icsnn_onnx.passes.temporal import TemporalPlan

Wired = tuple[gs.Node, list[gs.Tensor], list[gs.Tensor]]  # a node, its inputs and outputs


@dataclass(frozen=True)
class UnitWiring:
    """A compensated unit as the emitters see it (:mod:`.compensated`)."""

    name: str
    nodes: list[Wired]  # topological order
    inputs: list[gs.Tensor]  # the time-varying float tensors it reads from outside
    outputs: list[gs.Tensor]  # its tensors read outside it


def _condensed_order(body: list[gs.Node], unit_of: Mapping[str, str]) -> list[gs.Node]:
    """``body`` (topological) reordered so each unit's nodes are consecutive: a topological order
    of the graph with each unit one node (a unit is convex, so that graph has no cycle)."""
    if not unit_of:
        return body
    key = {n.name: unit_of.get(n.name, n.name) for n in body}
    members: dict[str, list[gs.Node]] = {}
    for node in body:
        members.setdefault(key[node.name], []).append(node)
    needs: dict[str, set[str]] = {k: set() for k in members}
    for node in body:
        for t in node.inputs:
            for producer in t.inputs:
                if producer.name in key and key[producer.name] != key[node.name]:
                    needs[key[node.name]].add(key[producer.name])
    order, placed = [], set()
    pending = list(members)  # in the order of each item's first node
    while pending:
        ready = next(k for k in pending if needs[k] <= placed)
        pending.remove(ready)
        placed.add(ready)
        order.extend(members[ready])
    return order


class Builder:
    """The state every layout's emitter works on, and how it adds nodes and constants."""

    def __init__(
        self,
        graph: gs.Graph,
        plan: TemporalPlan,
        T: int,
        per_step: bool,
        readout: Mapping[str, TransferFunction | None],
        encoders: Mapping[str, InputEncoder],
        gates: frozenset[str],
        channelwise: bool = False,
        units: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.graph, self.plan, self.T, self.per_step = graph, plan, T, per_step
        self.encoders, self.gates = encoders, gates
        self.channelwise = channelwise  # the cpu target: IFNeuronChannelwise where a site allows
        self.channelwise_sites: list[str] = []
        self.constants: dict[str, gs.Constant] = {}
        self.readout = readout  # compensated cut (a neuron output) → its activation function (None: none)
        self.membranes: dict[tuple[str, int], gs.Tensor] = {}  # (neuron output, t) → v(t)
        self.by_name = {n.name: n for n in graph.nodes}
        self.tensors = graph.tensors()
        self.prefix_means: dict[tuple[str, int], gs.Tensor] = {}  # (cut, t) → mean of steps 1..t
        self.units = dict(units or {})  # compensated unit → its nodes (topological order)

    def run(self) -> None:
        raise NotImplementedError

    def _add(
        self, op: str, name: str, inputs: list[gs.Tensor], outputs: list[gs.Tensor], **kw: object
    ) -> None:
        self.graph.nodes.append(gs.Node(op, name, inputs=inputs, outputs=outputs, **kw))

    def _const(self, name: str, value: object, dtype: object = np.int64) -> gs.Constant:
        """A named constant, created once (a name reused by later steps is the same tensor)."""
        if name not in self.constants:
            self.constants[name] = gs.Constant(name, np.asarray(value, dtype=dtype))
        return self.constants[name]

    def _take_body(self) -> list[Wired | UnitWiring]:
        """Detach the per-step nodes, returning their wiring (they are re-emitted per layout):
        each compensated unit as one :class:`UnitWiring`, at a place where every input of it is
        computed before (its nodes are then emitted together)."""
        body = [self.by_name[n] for n in self.plan.body]
        items: list[Wired | UnitWiring] = []
        done: set[str] = set()
        unit_of = {n: unit for unit, nodes in self.units.items() for n in nodes}
        for node in _condensed_order(body, unit_of):
            unit = unit_of.get(node.name)
            if unit is None:
                items.append((node, list(node.inputs), list(node.outputs)))
            elif unit not in done:
                done.add(unit)
                items.append(self._unit_wiring(unit))
        for node in body:
            detach(node)
        return items

    def _unit_wiring(self, unit: str) -> UnitWiring:
        """A unit's nodes and the tensors it exchanges with the rest: the time-varying float
        tensors it reads, and those of its outputs read outside it (or returned, or read out)."""
        nodes = [self.by_name[n] for n in self.units[unit]]
        members = {n.name for n in nodes}
        produced = {t.name for n in nodes for t in n.outputs}
        graph_outputs = {t.name for t in self.graph.outputs}
        inputs, outputs = [], []
        for node in nodes:
            implicit = [self.tensors[n] for n in sorted(outer_scope_inputs(node)) if n in self.tensors]
            for t in [*node.inputs, *implicit]:
                if t.name in self.plan.streams and t.name not in produced and t not in inputs:
                    inputs.append(t)
            for t in node.outputs:
                if (
                    any(c.name not in members for c in t.outputs)
                    or t.name in graph_outputs
                    or t.name in self.plan.cuts
                ):
                    outputs.append(t)
        wiring = [(n, list(n.inputs), list(n.outputs)) for n in nodes]
        return UnitWiring(unit, wiring, inputs, outputs)

    def _clone(
        self,
        node: gs.Node,
        inputs: list[gs.Tensor],
        outputs: list[gs.Tensor],
        suffix: str,
        shape: Callable[[list | None], list | None] = lambda s: s,
        outer: Mapping[str, gs.Tensor] | None = None,
    ) -> list[gs.Variable]:
        """Emit a copy of ``node`` reading ``inputs``; its outputs are named ``<output><suffix>``.
        A subgraph (an If's branches) is copied, what it reads around it replaced per ``outer``."""
        clones = [gs.Variable(f"{o.name}{suffix}", o.dtype, shape(o.shape)) for o in outputs]
        attrs = dict(node.attrs)
        if outer:
            attrs = {
                k: v.copy(tensor_map=dict(outer)) if isinstance(v, gs.Graph) else v for k, v in attrs.items()
            }
        self._add(node.op, f"{node.name}{suffix}", inputs, clones, attrs=attrs, domain=node.domain)
        return clones

    def _free_name(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2``, … if the graph already has a tensor so named."""
        taken = {t.name for n in self.graph.nodes for t in (*n.inputs, *n.outputs)}
        taken |= {t.name for t in (*self.graph.inputs, *self.graph.outputs)}
        free, k = name, 0
        while free in taken:
            k += 1
            free = f"{name}_{k}"
        return free
