"""The synaptic graph of an SNN file, as one time step sees it.

An SNN written by icsnn-onnx computes the same thing at every step: synaptic ops (Conv, Gemm,
pooling, Add, …) between neuron sites, and a head on the read-out. Step 1 of any layout shows it
all: this module names, for each tensor an exporter asks about, what it is at step 1 — a graph
input, a neuron site's spikes, or the output of one ONNX node whose inputs are again such tensors.
The layouts' plumbing is seen through: the time-batched layout's Split of a stacked tensor and
Concat of a site's steps, and the read-out nodes whose cut is a site's tensor (the head then reads
that site's spikes, step by step: the mean over T is the consumer's read-out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from icsnn_onnx.contract import base_name, is_readout_name
from icsnn_onnx.errors import ModelLoadError
from icsnn_onnx.runtime.instrument import NeuronLayer, neuron_layers


@dataclass(frozen=True)
class Spikes:
    """Tensor is site ``layer``'s output θ·s(t)."""

    layer: NeuronLayer


@dataclass(frozen=True)
class GraphInput:
    """Tensor is the model input ``name`` (direct coding: the same at every step)."""

    name: str


@dataclass(frozen=True)
class Op:
    """Tensor is output ``index`` of ONNX ``node``."""

    node: onnx.NodeProto
    index: int = 0


Origin = Spikes | GraphInput | Op

_PASS_THROUGH = ("Identity", "Dropout")


class SynapticGraph:
    """What each tensor of step 1 is, with constants and per-sample shapes (batch axis dropped)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.layers = neuron_layers(model)
        self.constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.producer = {out: (node, i) for node in model.graph.node for i, out in enumerate(node.output)}
        self.inputs = [i.name for i in model.graph.input if i.name not in self.constants]
        self.outputs = [o.name for o in model.graph.output]
        self._spikes: dict[str, NeuronLayer] = {}
        for layer in self.layers:
            for name in (*layer.outputs, layer.tensor):
                self._spikes[name] = layer
        self.shapes = _shapes(model)

    def origin(self, tensor: str) -> Origin:
        """What ``tensor`` is at step 1 (its aliases through the layouts' plumbing resolved)."""
        seen = set()
        while tensor not in seen:
            seen.add(tensor)
            if tensor in self._spikes:
                return Spikes(self._spikes[tensor])
            if tensor in self.inputs:
                return GraphInput(tensor)
            if tensor not in self.producer:
                raise ModelLoadError(f"tensor {tensor!r} has no producer: not a well-formed SNN")
            node, index = self.producer[tensor]
            if node.op_type in _PASS_THROUGH:
                tensor = node.input[0]
            elif node.op_type == "Split" and base_name(node.input[0]) != node.input[0]:
                tensor = node.input[0]  # a stacked tensor's steps: each one is step t's tensor
            elif node.op_type == "Concat" and (layer := self._one_layer(node.input)) is not None:
                return Spikes(layer)  # a site's steps stacked (time-batched layout)
            elif is_readout_name(node.name, {layer.tensor for layer in self.layers}):
                raise ModelLoadError(f"read-out node {node.name} writes {tensor}, not its cut")
            else:
                return Op(node, index)
        raise ModelLoadError(f"tensor {tensor!r} is defined by a cycle")

    def shape(self, tensor: str) -> tuple[int, ...]:
        """The per-sample shape of ``tensor`` (its step-1 form; every dimension known)."""
        origin = self.origin(tensor)
        names = [tensor]
        if isinstance(origin, Spikes):
            names = [origin.layer.outputs[0], tensor]
        for name in names:
            if name in self.shapes:
                return self.shapes[name]
        raise ModelLoadError(f"the shape of {tensor!r} is not known (run shape inference on the file)")

    def _one_layer(self, tensors: list[str]) -> NeuronLayer | None:
        layers = {id(self._spikes.get(t)) for t in tensors}
        first = self._spikes.get(tensors[0]) if tensors else None
        return first if first is not None and len(layers) == 1 else None


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes from ONNX shape inference: the leading (batch, or steps × batch) axis is
    dropped; shapes with another unknown dimension are left out."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as err:  # onnx raises several types here; the file is what is wrong
        raise ModelLoadError(f"shape inference failed on the SNN: {err}") from None
    shapes = {}
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    for value in values:
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim[1:]
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def as_array(value: np.ndarray) -> np.ndarray:
    """``value`` as a float64 array (exact for float32 weights; scales fold without rounding)."""
    return np.asarray(value, dtype=np.float64)
