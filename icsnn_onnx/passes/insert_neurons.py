"""Replace each activation site's chain by one stateful ``icsnn::IFSite`` node
``IFSite(z, θ, v0) -> y``; the unroll pass turns each into T ``IFNeuron`` steps
``(v, z, θ) -> (out, v')`` threading the membrane through time (two op types for two
signatures: a site never reaches a file, a step always does).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx import neuron
from icsnn_onnx.passes import Pass, PassResult, ensure, require
from icsnn_onnx.passes.graph_utils import detach
from icsnn_onnx.program import Program


def is_neuron(node: gs.Node) -> bool:
    """A neuron site awaiting unrolling."""
    return node.op == neuron.SITE_OP_TYPE and node.domain == neuron.DOMAIN


class InsertNeurons(Pass):
    def requires(self, program: Program) -> None:
        for name in program.sites:
            require(name in program.thresholds, self.name, f"site {name} has no threshold")
            require(name in program.v_init, self.name, f"site {name} has no initial potential")

    def ensures(self, program: Program) -> None:
        neurons = {n.name for n in program.graph.nodes if is_neuron(n)}
        ensure(neurons == set(program.sites), self.name, "one IFSite per site expected")
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
            params = neuron.IFParams(program.thresholds[site.name], program.v_init[site.name])
            theta = gs.Constant(f"{site.name}.threshold", params.threshold.astype(dtype))
            v0 = gs.Constant(f"{site.name}.v_init", params.v_init.astype(dtype))
            graph.nodes.append(
                gs.Node(
                    neuron.SITE_OP_TYPE, site.name, inputs=[z, theta, v0], outputs=[y], domain=neuron.DOMAIN
                )
            )
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(program, bool(program.sites))
