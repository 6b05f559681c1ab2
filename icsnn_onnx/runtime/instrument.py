"""Find the IF neurons of any SNN file icsnn-onnx wrote, and expose what they do.

The file is self-describing: every neuron step is an ``icsnn`` node (``IFNeuron`` or
``IFNeuronChannelwise``, any kind of :mod:`icsnn_onnx.neurons`) named
:func:`~icsnn_onnx.contract.step_name` ``(site, t)``, whose inputs and outputs the kind names
(:class:`~icsnn_onnx.neurons.NeuronKind`: the membrane v(t-1) and current z(t) in, out(t) and v(t)
out).
:func:`instrument` adds running sums of each neuron layer's output and input current and
exposes them, with the membrane, at chosen steps, so a caller reads rates, mean currents and
residual potentials after t steps without holding every step's tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from icsnn_onnx.contract import NEURON_DOMAIN, loop_step_name, parse_step_name, step_name
from icsnn_onnx.errors import ModelLoadError
from icsnn_onnx.neurons import IF, NeuronKind, kind_of


@dataclass(frozen=True)
class LoopStep:
    """A layer's step inside a ``--layout loop`` body (steps 2…T)."""

    output: str  # out(t)
    current: str  # z(t)
    membrane: str  # v(t), a loop-carried value
    final_membrane: str  # v(T), the Loop node's output for it


@dataclass(frozen=True)
class NeuronLayer:
    """One neuron site's T steps, as found in an SNN file: every step's tensors when unrolled;
    step 1's and the loop body's under ``--layout loop``."""

    name: str
    T: int
    outputs: tuple[str, ...]  # out(t) of the unrolled steps: θ·s(t)
    currents: tuple[str, ...]  # z(t) (the same tensor at every step for a hoisted input layer)
    membranes: tuple[str, ...]  # v(t)
    v_init: str  # v(0)
    threshold: np.ndarray | None  # θ (portable neurons; None for the channelwise form)
    loop: LoopStep | None = None
    op_type: str = IF.op_type  # its steps' op type: which neuron kind (icsnn_onnx.neurons)

    @property
    def kind(self) -> NeuronKind:
        """The neuron kind of its steps (for a sigma-delta kind of another process: its signature)."""
        kind = kind_of(NEURON_DOMAIN, self.op_type)
        assert kind is not None  # found as a step
        return kind

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
    """Every neuron site of an SNN, in graph order; a :class:`ModelLoadError` if none."""
    constants = {t.name: t for t in model.graph.initializer}
    steps: dict[str, dict[int, onnx.NodeProto]] = {}
    for node in model.graph.node:
        if _is_step(node) and (parsed := parse_step_name(node.name)) is not None:
            steps.setdefault(parsed[0], {})[parsed[1]] = node
    if not steps:
        raise ModelLoadError("no IF neuron steps found: not an SNN written by icsnn-onnx")
    looped = _loop_steps(model, constants)
    layers = []
    for name, by_t in steps.items():
        unrolled = max(by_t)
        if sorted(by_t) != list(range(1, unrolled + 1)):
            raise ModelLoadError(f"neuron {name}: steps {sorted(by_t)} are not 1..{unrolled}")
        nodes = [by_t[t] for t in range(1, unrolled + 1)]
        kind = _kind(nodes[0])
        theta = None  # θ where the kind has one (the channelwise form folds it into its constants)
        threshold = _input(kind, nodes[0], "theta") if "theta" in kind.parameters else None
        if threshold in constants:
            theta = numpy_helper.to_array(constants[threshold])
        loop, T = looped.get(name, (None, unrolled))
        layers.append(
            NeuronLayer(
                name=name,
                T=T,
                outputs=tuple(n.output[0] for n in nodes),
                currents=tuple(_input(kind, n, kind.current) for n in nodes),
                membranes=tuple(_membrane(kind, n) for n in nodes),
                v_init=_input(kind, nodes[0], kind.membrane),
                threshold=theta,
                loop=loop,
                op_type=kind.op_type,
            )
        )
    return layers


def _kind(node: onnx.NodeProto) -> NeuronKind:
    kind = kind_of(node.domain, node.op_type)
    assert kind is not None  # only steps are asked
    return kind


def _is_step(node: onnx.NodeProto) -> bool:
    kind = kind_of(node.domain, node.op_type)
    return kind is not None and len(node.output) == len(kind.outputs) and len(node.input) == len(kind.inputs)


def _input(kind: NeuronKind, node: onnx.NodeProto, name: str) -> str:
    """The tensor a step node reads as its kind's input ``name``."""
    return node.input[kind.inputs.index(name)]


def _membrane(kind: NeuronKind, node: onnx.NodeProto) -> str:
    """The tensor a step node writes the membrane after the step to."""
    return node.output[kind.outputs.index(f"{kind.membrane}_next")]


def _loop_steps(model: onnx.ModelProto, constants: dict) -> dict[str, tuple[LoopStep, int]]:
    """Each layer's step in a ``--layout loop`` body, and T (1 + the Loop's trip count)."""
    found: dict[str, tuple[LoopStep, int]] = {}
    for loop in (n for n in model.graph.node if n.op_type == "Loop"):
        body = next(a.g for a in loop.attribute if a.name == "body")
        if loop.input[0] not in constants:
            raise ModelLoadError(f"Loop {loop.name}: its trip count is not a constant")
        T = 1 + int(numpy_helper.to_array(constants[loop.input[0]]))
        carried = {out.name: i - 1 for i, out in enumerate(body.output) if 0 < i < len(loop.input) - 1}
        suffix = loop_step_name("")
        for node in body.node:
            if _is_step(node) and node.name.endswith(suffix) and _membrane(_kind(node), node) in carried:
                kind = _kind(node)
                membrane = _membrane(kind, node)
                final = loop.output[carried[membrane]]
                step = LoopStep(node.output[0], _input(kind, node, kind.current), membrane, final)
                found[node.name.removesuffix(suffix)] = (step, T)
    return found


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
    for loop in (n for n in model.graph.node if n.op_type == "Loop"):
        body = next(a.g for a in loop.attribute if a.name == "body")
        taken |= {o for n in body.node for o in n.output} | {i.name for i in body.input}

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
        if layer.loop is not None:
            if not set(wanted) <= {1, layer.T}:
                raise ValueError(f"a --layout loop SNN is traced after step 1 and after T={layer.T} only")
            output_sum, current_sum = _sum_over_loop(graph, layer, fresh, _float_type(model))
            if 1 in wanted:
                probes[(layer.name, 1)] = Probe(layer.outputs[0], layer.currents[0], layer.membranes[0])
            if layer.T in wanted:
                probes[(layer.name, layer.T)] = Probe(output_sum, current_sum, layer.loop.final_membrane)
            continue
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


def _sum_over_loop(
    graph: onnx.GraphProto, layer: NeuronLayer, fresh: Callable[[str], str], elem: int
) -> tuple[str, str]:
    """Carry running sums of a looped layer's outputs and currents through the Loop (started at
    step 1's); return the names of their values after step T."""
    loop = next(n for n in graph.node if n.op_type == "Loop" and layer.loop.final_membrane in n.output)
    body = next(a.g for a in loop.attribute if a.name == "body")
    carried = len(loop.input) - 2
    body_in, body_out, initial, final = [], [], [], []
    for kind, first, inner in (
        ("output", layer.outputs[0], layer.loop.output),
        ("current", layer.currents[0], layer.loop.current),
    ):
        previous = fresh(f"{layer.name}.{kind}_sum.previous")
        total = fresh(loop_step_name(f"{layer.name}.{kind}_sum"))
        body.node.append(helper.make_node("Add", [previous, inner], [total], name=total))
        body_in.append(helper.make_tensor_value_info(previous, elem, None))
        body_out.append(helper.make_tensor_value_info(total, elem, None))
        initial.append(first)
        final.append(fresh(step_name(f"{layer.name}.{kind}_sum", layer.T)))
    inputs, outputs = list(body.input), list(body.output)
    del body.input[:], body.output[:]
    body.input.extend([*inputs, *body_in])
    body.output.extend([*outputs[: 1 + carried], *body_out, *outputs[1 + carried :]])
    loop_in, loop_out = list(loop.input), list(loop.output)
    del loop.input[:], loop.output[:]
    loop.input.extend([*loop_in, *initial])
    loop.output.extend([*loop_out[:carried], *final, *loop_out[carried:]])
    return final[0], final[1]


def _float_type(model: onnx.ModelProto) -> int:
    """The element type of the model's float tensors (neurons run in the inputs' float type)."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    for value in model.graph.input:
        if value.type.tensor_type.elem_type in floats:
            return value.type.tensor_type.elem_type
    return onnx.TensorProto.FLOAT
