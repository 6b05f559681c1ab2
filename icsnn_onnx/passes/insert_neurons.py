"""Replace each activation site's chain by one stateful ``icsnn::NeuronSite`` node
``NeuronSite(z, θ, v0) -> y`` (attribute ``kind``: the neuron kind's name); the unroll pass turns
each into T steps of its kind, ``(v, z, θ) -> (out, v')`` for the IF neuron, threading the
membrane through time (two op types for two signatures: a site never reaches a file, a step
always does).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx import neurons
from icsnn_onnx.contract import NEURON_DOMAIN
from icsnn_onnx.neurons import IF, NeuronKind
from icsnn_onnx.neurons.if_neuron import IFParams
from icsnn_onnx.passes import Pass, PassResult, ensure, require
from icsnn_onnx.passes.graph_utils import detach
from icsnn_onnx.passes.program import Program

#: A neuron site inside the compiler, before unrolling: ``(z, θ, v(0)) -> out``. Never in a file.
SITE_OP_TYPE = "NeuronSite"


def is_neuron(node: gs.Node) -> bool:
    """A neuron site awaiting unrolling."""
    return node.op == SITE_OP_TYPE and node.domain == NEURON_DOMAIN


def site_kind(node: gs.Node) -> NeuronKind:
    """The neuron kind a site node stands for."""
    return neurons.by_name(node.attrs["kind"])


class InsertNeurons(Pass):
    def requires(self, program: Program) -> None:
        for name in program.sites:
            require(name in program.thresholds, self.name, f"site {name} has no threshold")
            require(name in program.v_init, self.name, f"site {name} has no initial potential")

    def ensures(self, program: Program) -> None:
        neurons = {n.name for n in program.graph.nodes if is_neuron(n)}
        ensure(neurons == set(program.sites), self.name, "one NeuronSite per site expected")
        left = [n.name for n in program.graph.nodes if n.op == "Relu"]
        ensure(not left, self.name, f"ReLU left after neuron insertion: {left}")

    def call(self, program: Program) -> PassResult:
        graph = program.graph
        by_name = {n.name: n for n in graph.nodes}
        tensors = graph.tensors()
        for site in program.sites.values():
            z, y = tensors[site.input], tensors[site.output]
            for name in site.nodes:
                detach(by_name[name])
            dtype = np.dtype(z.dtype) if z.dtype is not None else np.dtype(np.float32)
            params = IFParams(program.thresholds[site.name], program.v_init[site.name])
            theta = gs.Constant(f"{site.name}.threshold", params.threshold.astype(dtype))
            v0 = gs.Constant(f"{site.name}.v_init", params.v_init.astype(dtype))
            graph.nodes.append(
                gs.Node(
                    SITE_OP_TYPE,
                    site.name,
                    attrs={"kind": IF.name},
                    inputs=[z, theta, v0],
                    outputs=[y],
                    domain=NEURON_DOMAIN,
                )
            )
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(program, bool(program.sites))
