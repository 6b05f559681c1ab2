"""Replace each activation site's chain by one stateful ``icsnn::NeuronSite`` node
``NeuronSite(z, *parameters, *initial states) -> y`` (attribute ``kind``: the neuron kind): the IF
neuron's ``(z, θ, v0)`` for the ReLU family, the sigma-delta kind of the site's own function,
``(z, θ, v0, acc0 = 0, d0 = 0)``, for every other activation. The unroll pass turns each into T
steps of its kind, threading its states through time (two op types for two signatures: a site
never reaches a file, a step always does).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx import neurons
from icsnn_onnx.contract import NEURON_DOMAIN
from icsnn_onnx.neurons import IF, NeuronKind, graded_if, sigma_delta
from icsnn_onnx.neurons.if_neuron import IFParams
from icsnn_onnx.passes import Pass, PassResult, ensure, require
from icsnn_onnx.passes.graph_utils import detach
from icsnn_onnx.passes.program import ActivationSite, Program

#: A neuron site inside the compiler, before unrolling: ``(z, θ, v(0)) -> out``. Never in a file.
SITE_OP_TYPE = "NeuronSite"


def is_neuron(node: gs.Node) -> bool:
    """A neuron site awaiting unrolling."""
    return node.op == SITE_OP_TYPE and node.domain == NEURON_DOMAIN


def site_kind(node: gs.Node) -> NeuronKind:
    """The neuron kind a site node stands for."""
    return neurons.by_name(node.attrs["kind"])


def neuron_kind(site: ActivationSite, dtype: np.dtype, levels: int = 1) -> NeuronKind:
    """The kind a site becomes: the IF neuron (graded with ``levels`` > 1), or the sigma-delta
    neuron of its function."""
    if site.neuron == IF.name:
        return IF if levels == 1 else graded_if(levels)
    assert site.transfer.function is not None  # a generic activation carries its function
    return sigma_delta(site.transfer.function, dtype, levels)


class InsertNeurons(Pass):
    def requires(self, program: Program) -> None:
        for name in program.sites:
            require(name in program.thresholds, self.name, f"site {name} has no threshold")
            require(name in program.v_init, self.name, f"site {name} has no initial potential")

    def ensures(self, program: Program) -> None:
        neurons = {n.name for n in program.graph.nodes if is_neuron(n)}
        ensure(neurons == set(program.sites), self.name, "one NeuronSite per site expected")
        in_sites = {name for site in program.sites.values() for name in site.nodes}
        left = [n.name for n in program.graph.nodes if n.name in in_sites and not is_neuron(n)]
        ensure(not left, self.name, f"activation nodes left after neuron insertion: {left}")

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
            kind = neuron_kind(site, dtype, program.options.levels)
            zeros = [gs.Constant(f"{site.name}.{s}_init", np.zeros((), dtype)) for s in kind.states[1:]]
            graph.nodes.append(
                gs.Node(
                    SITE_OP_TYPE,
                    site.name,
                    attrs={"kind": kind.name if kind is IF else kind.op_type},
                    inputs=[z, theta, v0, *zeros],
                    outputs=[y],
                    domain=NEURON_DOMAIN,
                )
            )
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(program, bool(program.sites))
