"""The synaptic layers of an SNN file and what one input element costs them.

A synaptic layer is a Conv, Gemm or MatMul with constant weights. One that runs at every step
receives spikes: each adds a weight to every output its input element reaches — the element's
*fan-out*, counted exactly as sinabs does (strides, padding and borders included: an element
near a border reaches fewer windows). One that runs once — the input layer under direct coding
(hoisted), the output layer on the read-out — computes dense multiply-accumulates, as the ANN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from icsnn_onnx.contract import PER_STEP_HEAD, base_name, parse_step_name
from icsnn_onnx.ops.windows import attributes, resolve_pads

SYNAPTIC_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Synapse:
    """One synaptic layer of an SNN file."""

    name: str  # the ANN node's name (step suffix removed)
    op_type: str
    weight_shape: tuple[int, ...]
    attrs: dict
    node: str  # the node in the main graph: step 1's copy, the stacked one, or the only one
    input: str  # its input x
    stepped: bool  # it runs at every step (a step copy, or on the steps stacked)


def find_synapses(model: onnx.ModelProto) -> list[Synapse]:
    """The synaptic layers of ``model``, in graph order (a Loop body repeats step 1's)."""
    constants = {t.name: t for t in model.graph.initializer}
    found: dict[str, Synapse] = {}
    for node in model.graph.node:
        if node.op_type not in SYNAPTIC_OPS or len(node.input) < 2 or node.input[1] not in constants:
            continue
        if PER_STEP_HEAD in node.name:  # per-step outputs' copies of the head compute outputs
            continue
        base = base_name(node.name)
        parsed = parse_step_name(node.name)
        if base in found or (parsed is not None and parsed[1] != 1):
            continue
        attrs = attributes(node)
        weight = tuple(constants[node.input[1]].dims)
        stepped = base != node.name
        found[base] = Synapse(base, node.op_type, weight, attrs, node.name, node.input[0], stepped)
    return list(found.values())


def _outputs_per_input(synapse: Synapse) -> int:
    """Output features one input element connects to, per output position it reaches."""
    if synapse.op_type == "Conv":
        return synapse.weight_shape[0] // int(synapse.attrs.get("group", 1))
    if synapse.op_type == "Gemm":
        return synapse.weight_shape[0] if synapse.attrs.get("transB", 0) else synapse.weight_shape[-1]
    return synapse.weight_shape[-1]  # MatMul: x[..., K] @ W[K, M]


def fanout(synapse: Synapse, input_shape: tuple[int, ...]) -> np.ndarray:
    """Per input element (broadcast against ``input_shape[1:]``), how many weights it adds."""
    per = _outputs_per_input(synapse)
    if synapse.op_type != "Conv":
        return np.full((1,) * (len(input_shape) - 1), per, np.int64)
    spatial = input_shape[2:]
    kernel = synapse.weight_shape[2:]
    n = len(kernel)
    strides = list(synapse.attrs.get("strides", [1] * n))
    dilations = list(synapse.attrs.get("dilations", [1] * n))
    pads = resolve_pads(synapse.attrs, spatial, kernel, strides, dilations)
    counts = []
    for axis in range(n):
        size, k, s, d = spatial[axis], kernel[axis], strides[axis], dilations[axis]
        begin, end = pads[axis], pads[n + axis]
        outputs = (size + begin + end - d * (k - 1) - 1) // s + 1
        covered = np.zeros(size, np.int64)
        for o in range(outputs):
            for j in range(k):
                position = o * s - begin + j * d
                if 0 <= position < size:
                    covered[position] += 1
        counts.append(covered)
    grid = counts[0]
    for covered in counts[1:]:
        grid = np.multiply.outer(grid, covered)
    return (grid * per)[None, ...]  # the same for every input channel


def macs(synapse: Synapse, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one sample through the layer, dense (what the ANN computes)."""
    elements = math.prod(input_shape[1:])
    return int(np.sum(np.broadcast_to(fanout(synapse, input_shape), input_shape[1:]))) if elements else 0


def weights_of(model: onnx.ModelProto, synapse: Synapse) -> np.ndarray:
    """The layer's weight tensor (for exports and tests)."""
    node = next(n for n in model.graph.node if n.name == synapse.node)
    constants = {t.name: t for t in model.graph.initializer}
    return numpy_helper.to_array(constants[node.input[1]])
