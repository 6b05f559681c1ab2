"""The emitters' common state and node-building helpers."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.passes.graph_utils import detach
from icsnn_onnx.passes.program import InputEncoder, TransferFunction
from icsnn_onnx.passes.temporal import TemporalPlan


class Builder:
    """The state every layout's emitter works on, and how it adds nodes and constants."""

    def __init__(
        self,
        graph: gs.Graph,
        plan: TemporalPlan,
        T: int,
        per_step: bool,
        readout: Mapping[str, TransferFunction],
        encoders: Mapping[str, InputEncoder],
        gates: frozenset[str],
        channelwise: bool = False,
    ) -> None:
        self.graph, self.plan, self.T, self.per_step = graph, plan, T, per_step
        self.encoders, self.gates = encoders, gates
        self.channelwise = channelwise  # the cpu target: IFNeuronChannelwise where a site allows
        self.channelwise_sites: list[str] = []
        self.constants: dict[str, gs.Constant] = {}
        self.readout = readout  # compensated cut (a neuron output) → its activation function
        self.membranes: dict[tuple[str, int], gs.Tensor] = {}  # (neuron output, t) → v(t)
        self.by_name = {n.name: n for n in graph.nodes}
        self.tensors = graph.tensors()
        self.prefix_means: dict[tuple[str, int], gs.Tensor] = {}  # (cut, t) → mean of steps 1..t

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

    def _take_body(self) -> list[tuple[gs.Node, list[gs.Tensor], list[gs.Tensor]]]:
        """Detach the per-step nodes, returning their wiring (they are re-emitted per layout)."""
        body = [self.by_name[n] for n in self.plan.body]
        wiring = [(n, list(n.inputs), list(n.outputs)) for n in body]
        for node in body:
            detach(node)
        return wiring

    def _clone(
        self,
        node: gs.Node,
        inputs: list[gs.Tensor],
        outputs: list[gs.Tensor],
        suffix: str,
        shape: Callable[[list | None], list | None] = lambda s: s,
    ) -> list[gs.Variable]:
        """Emit a copy of ``node`` reading ``inputs``; its outputs are named ``<output><suffix>``."""
        clones = [gs.Variable(f"{o.name}{suffix}", o.dtype, shape(o.shape)) for o in outputs]
        self._add(node.op, f"{node.name}{suffix}", inputs, clones, attrs=dict(node.attrs), domain=node.domain)
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
