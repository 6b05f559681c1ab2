"""Find the IF neurons of any SNN file icsnn-onnx wrote, and expose what they do.

The file is self-describing: every neuron step is an ``icsnn`` node (``IFNeuron`` or
``IFNeuronChannelwise``) named :func:`~icsnn_onnx.contract.step_name` ``(site, t)`` with inputs
``(v(t-1), z(t), …)`` and outputs ``(out(t), v(t))`` (:data:`icsnn_onnx.neuron.STEP_INPUTS`).
:func:`instrument` adds running sums of each neuron layer's output and input current and
exposes them, with the membrane, at chosen steps, so a caller reads rates, mean currents and
residual potentials after t steps without holding every step's tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from icsnn_onnx import neuron
from icsnn_onnx.contract import parse_step_name
from icsnn_onnx.errors import ModelLoadError

_STEP_OPS = (neuron.OP_TYPE, neuron.CHANNELWISE_OP_TYPE)


@dataclass(frozen=True)
class NeuronLayer:
    """One neuron site's T steps, as found in an SNN file."""

    name: str
    outputs: tuple[str, ...]  # out(t), t = 1..T: θ·s(t)
    currents: tuple[str, ...]  # z(t) (the same tensor at every step for a hoisted input layer)
    membranes: tuple[str, ...]  # v(t)
    v_init: str  # v(0)
    threshold: np.ndarray | None  # θ (portable neurons; None for the channelwise form)

    @property
    def T(self) -> int:
        return len(self.outputs)

    @property
    def tensor(self) -> str:
        """The activation tensor this layer replaces (its name in the ANN)."""
        parsed = parse_step_name(self.outputs[0])
        return parsed[0] if parsed else self.outputs[0]

    @property
    def current(self) -> str:
        """The pre-activation tensor feeding it (its name in the ANN)."""
        parsed = parse_step_name(self.currents[0])
        return parsed[0] if parsed else self.currents[0]


def neuron_layers(model: onnx.ModelProto) -> list[NeuronLayer]:
    """Every neuron site of an unrolled SNN, in graph order; a :class:`ModelLoadError` if none."""
    constants = {t.name: t for t in model.graph.initializer}
    steps: dict[str, dict[int, onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.domain != neuron.DOMAIN or node.op_type not in _STEP_OPS or len(node.output) != 2:
            continue
        parsed = parse_step_name(node.name)
        if parsed is not None:
            steps.setdefault(parsed[0], {})[parsed[1]] = node
    if not steps:
        raise ModelLoadError("no IF neuron steps found: not an SNN written by icsnn-onnx")
    if any(node.op_type == "Loop" for node in model.graph.node):
        raise ModelLoadError(
            "the SNN runs its steps in an ONNX Loop (--layout loop): convert it with an unrolled "
            "layout (step-major or time-batched) to trace its neurons"
        )
    layers = []
    for name, by_t in steps.items():
        T = max(by_t)
        if sorted(by_t) != list(range(1, T + 1)):
            raise ModelLoadError(f"neuron {name}: steps {sorted(by_t)} are not 1..{T}")
        nodes = [by_t[t] for t in range(1, T + 1)]
        theta = None
        if nodes[0].op_type == neuron.OP_TYPE and nodes[0].input[2] in constants:
            theta = numpy_helper.to_array(constants[nodes[0].input[2]])
        layers.append(
            NeuronLayer(
                name=name,
                outputs=tuple(n.output[0] for n in nodes),
                currents=tuple(n.input[1] for n in nodes),
                membranes=tuple(n.output[1] for n in nodes),
                v_init=nodes[0].input[0],
                threshold=theta,
            )
        )
    return layers


@dataclass(frozen=True)
class Probe:
    """Names of the exposed tensors of one layer at step t."""

    output_sum: str  # Σ_{k≤t} out(k)
    current_sum: str  # Σ_{k≤t} z(k)
    membrane: str  # v(t)


def expose(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that returns ``tensors`` (in that order) instead of its outputs."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    known = {
        v.name: v for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)
    }
    del exposed.graph.output[:]
    for name in tensors:
        value = known.get(name)
        elem = value.type.tensor_type.elem_type if value is not None else onnx.TensorProto.FLOAT
        exposed.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return exposed


def instrument(
    model: onnx.ModelProto, layers: Sequence[NeuronLayer], steps: Sequence[int]
) -> tuple[onnx.ModelProto, dict[tuple[str, int], Probe]]:
    """A copy of ``model`` that also returns, for each layer and each t in ``steps``, the running
    sums of its outputs and currents and its membrane v(t). The model's own outputs stay first."""
    taken = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    taken |= {t.name for t in model.graph.initializer}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    wanted = sorted(set(steps))
    instrumented = onnx.ModelProto()
    instrumented.CopyFrom(model)
    graph = instrumented.graph
    probes: dict[tuple[str, int], Probe] = {}
    for layer in layers:
        if wanted and (wanted[0] < 1 or wanted[-1] > layer.T):
            raise ValueError(f"steps must lie in 1..{layer.T}, got {wanted}")
        sums = {}
        for kind, tensors in (("output", layer.outputs), ("current", layer.currents)):
            running = tensors[0]
            by_t = {1: running}
            for t in range(2, wanted[-1] + 1 if wanted else 1):
                total = fresh(f"{layer.name}.{kind}_sum@{t}")
                graph.node.append(helper.make_node("Add", [running, tensors[t - 1]], [total], name=total))
                running = by_t[t] = total
            sums[kind] = by_t
        for t in wanted:
            probes[(layer.name, t)] = Probe(sums["output"][t], sums["current"][t], layer.membranes[t - 1])
    extra = list(dict.fromkeys(n for p in probes.values() for n in (p.output_sum, p.current_sum, p.membrane)))
    exposed = [o.name for o in graph.output]
    elem = _float_type(model)
    for name in extra:
        if name not in exposed:
            graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return instrumented, probes


def _float_type(model: onnx.ModelProto) -> int:
    """The element type of the model's float tensors (neurons run in the inputs' float type)."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    for value in model.graph.input:
        if value.type.tensor_type.elem_type in floats:
            return value.type.tensor_type.elem_type
    return onnx.TensorProto.FLOAT
