"""Apply bias calibration: each corrected site's current gains its ``δ`` (docs/method.md §17).

Bias calibration (:meth:`~icsnn_onnx.passes.one_pass.OnePass.correct_bias`, run with Alg 2's
pass) measures, per channel, the mean SNN-minus-ANN error of a site's current at the compiled T:
the mean output errors of the sites before it, carried by the linear layer that computes the
current. Removing it is a change of that layer's bias: folded into it where the current comes
straight from a Conv, ConvTranspose or Gemm (or a constant bias ``Add``) read by nothing else, so
the SNN is no larger; otherwise a constant ``Add`` on the site's own input (ONNX Runtime fuses
one after a Conv), which other readers of the current do not see.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.passes import Pass, PassResult
from icsnn_onnx.passes.fold_batchnorm import FoldBatchNorm
from icsnn_onnx.passes.graph_utils import channel_shape, producer, sole_consumer, tensor_rank
from icsnn_onnx.passes.program import ActivationSite, Program


class ApplyCurrentBias(Pass):
    """``program.current_bias`` into the graph, before the neurons are inserted."""

    def call(self, program: Program) -> PassResult:
        if not program.current_bias:
            return PassResult(program, False)
        graph = program.graph
        for name, delta in program.current_bias.items():
            site = program.sites[name]
            tensors = graph.tensors()
            z = tensors[site.input]
            if not _fold(graph, site, z, np.asarray(delta, np.float64)):
                program.sites[name] = _add(graph, site, z, np.asarray(delta, np.float64))
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(program, True)


def _fold(graph: gs.Graph, site: ActivationSite, z: gs.Tensor, delta: np.ndarray) -> bool:
    """``δ`` into the bias of the layer computing ``z`` alone, if there is one."""
    reader = sole_consumer(graph, z)
    layer = producer(z)
    if reader is None or reader.name not in site.nodes or layer is None:
        return False
    rank = tensor_rank(z)
    flat = delta.reshape(-1)
    if layer.op == "Add":  # Conv/MatMul + a constant bias exported as two nodes
        constant = [i for i, t in enumerate(layer.inputs) if isinstance(t, gs.Constant)]
        if len(constant) != 1 or rank is None:
            return False
        k = constant[0]
        bias = np.asarray(layer.inputs[k].values)
        folded = bias.astype(np.float64) + delta.reshape(channel_shape(rank, flat.size) if rank >= 2 else ())
        if folded.ndim > rank:  # would grow the output's rank
            return False
        layer.inputs[k] = gs.Constant(f"{layer.name}__calibrated_bias", folded.astype(bias.dtype))
        return True
    if layer.op == "MatMul" or not FoldBatchNorm._foldable(layer, rank) or (rank != 2 and layer.op == "Gemm"):
        return False
    dtype = np.asarray(layer.inputs[1].values).dtype
    channels = _output_channels(layer)
    if channels is None or flat.size not in (1, channels):
        return False
    FoldBatchNorm._absorb_bias(graph, layer, np.ones(channels), np.broadcast_to(flat, (channels,)), dtype)
    return True


def _output_channels(layer: gs.Node) -> int | None:
    w = np.asarray(layer.inputs[1].values)
    if layer.op == "Conv":
        return w.shape[0]
    if layer.op == "ConvTranspose":
        return w.shape[1] * int(layer.attrs.get("group", 1))
    if layer.op == "Gemm":
        return w.shape[0] if layer.attrs.get("transB", 0) else w.shape[1]
    return None


def _add(graph: gs.Graph, site: ActivationSite, z: gs.Tensor, delta: np.ndarray) -> ActivationSite:
    """A constant ``Add`` writing the site's own, corrected current."""
    dtype = np.dtype(z.dtype) if z.dtype is not None else np.dtype(np.float32)
    corrected = gs.Variable(f"{z.name}__calibrated", z.dtype, z.shape)
    constant = gs.Constant(f"{site.name}.current_bias", delta.astype(dtype))
    graph.nodes.append(
        gs.Node("Add", f"{site.name}.current_bias_add", inputs=[z, constant], outputs=[corrected])
    )
    members = set(site.nodes)
    for node in list(z.outputs):
        if node.name in members:
            for k, tensor in enumerate(node.inputs):
                if tensor is z:
                    node.inputs[k] = corrected
    return replace(site, input=corrected.name)
