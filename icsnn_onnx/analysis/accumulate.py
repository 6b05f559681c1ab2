"""Sums over the time steps, computed inside the SNN's own graph (bounded memory, any T).

A report needs, per neuron and per synapse input, how many steps something happened in: spikes,
steps before the first spike, nonzero inputs to a convolution. Each is a running state updated
once per step from that step's tensors. In an unrolled SNN the updates are chained through the
step copies ``x@1 … x@T``; under ``--layout loop`` step 1's update runs in the main graph and the
others in the Loop body, the state carried from step to step like the membranes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from icsnn_onnx.contract import loop_step_name, step_name

#: One step's update: (emit, previous states or None at step 1, that step's tensors) → new states.
Update = Callable[["Emit", tuple[str, ...] | None, Sequence[str]], tuple[str, ...]]


@dataclass(frozen=True)
class Family:
    """A quantity accumulated over the steps: its update and, per step, the tensors it reads
    (unrolled: one tuple per step; looped: step 1's tuple and the body's)."""

    name: str
    update: Update
    steps: tuple[tuple[str, ...], ...]
    body: tuple[str, ...] | None = None  # the Loop body's tensors (layout loop)


class Emit:
    """Adds nodes to one graph, with names no one else uses."""

    def __init__(self, graph: onnx.GraphProto, taken: set[str], tag: Callable[[str], str]) -> None:
        self.graph, self.taken, self.tag = graph, taken, tag

    def fresh(self, base: str) -> str:
        name, k = self.tag(base), 1
        while name in self.taken:
            name, k = self.tag(f"{base}_{k}"), k + 1
        self.taken.add(name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], base: str, **attrs: object) -> str:
        out = self.fresh(base)
        self.graph.node.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value: float, base: str) -> str:
        name = self.fresh(base)
        self.graph.initializer.append(helper.make_tensor(name, onnx.TensorProto.FLOAT, [], [value]))
        return name

    def nonzero(self, x: str, base: str) -> str:
        """1.0 where ``x`` is not zero, else 0.0."""
        zero = self.const(0.0, f"{base}.zero")
        equal = self.op("Equal", [x, self.op("CastLike", [zero, x], f"{base}.zero_like")], f"{base}.is_zero")
        return self.op("Cast", [self.op("Not", [equal], f"{base}.is_nonzero")], f"{base}.nonzero", to=1)

    def is_zero(self, x: str, base: str) -> str:
        zero = self.const(0.0, f"{base}.zero")
        return self.op("Cast", [self.op("Equal", [x, zero], f"{base}.is_zero")], f"{base}.zero_flag", to=1)

    def add(self, a: str | None, b: str, base: str) -> str:
        return b if a is None else self.op("Add", [a, b], base)


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name of the model, its Loop bodies included."""
    graphs = [model.graph]
    names: set[str] = set()
    while graphs:
        graph = graphs.pop()
        names |= {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
        names |= {t.name for t in graph.initializer}
        graphs += [a.g for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    return names


def accumulate(
    model: onnx.ModelProto, families: Sequence[Family]
) -> tuple[onnx.ModelProto, dict[str, tuple[str, ...]]]:
    """A copy of ``model`` that also returns each family's states after the last step; the map
    family → their output names. The model's own outputs stay first."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph, taken = copy.graph, all_names(model)
    loop = next((n for n in graph.node if n.op_type == "Loop"), None)
    finals: dict[str, tuple[str, ...]] = {}
    for family in families:
        if family.body is None:
            state: tuple[str, ...] | None = None
            for t, tensors in enumerate(family.steps, start=1):
                state = family.update(Emit(graph, taken, lambda b, t=t: step_name(b, t)), state, tensors)
            finals[family.name] = state
        else:
            first = family.update(Emit(graph, taken, lambda b: step_name(b, 1)), None, family.steps[0])
            finals[family.name] = _carry(loop, taken, family, first)
    for names in finals.values():
        for name in names:
            graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy, finals


def _carry(loop: onnx.NodeProto, taken: set[str], family: Family, first: tuple[str, ...]) -> tuple[str, ...]:
    """Thread a family's states through the Loop: extra carried values, started at step 1's."""
    body = next(a.g for a in loop.attribute if a.name == "body")
    carried = len(loop.input) - 2
    emit = Emit(body, taken, loop_step_name)
    previous = tuple(emit.fresh(f"{family.name}.previous{i}") for i in range(len(first)))
    updated = family.update(emit, previous, family.body)
    final = tuple(
        Emit(body, taken, lambda base: base).fresh(f"{family.name}.final{i}") for i in range(len(first))
    )
    inputs, outputs = list(body.input), list(body.output)
    del body.input[:], body.output[:]
    body.input.extend(
        [*inputs, *(helper.make_tensor_value_info(p, onnx.TensorProto.FLOAT, None) for p in previous)]
    )
    new_outputs = [helper.make_tensor_value_info(u, onnx.TensorProto.FLOAT, None) for u in updated]
    body.output.extend([*outputs[: 1 + carried], *new_outputs, *outputs[1 + carried :]])
    loop_in, loop_out = list(loop.input), list(loop.output)
    del loop.input[:], loop.output[:]
    loop.input.extend([*loop_in, *first])
    loop.output.extend([*loop_out[:carried], *final, *loop_out[carried:]])
    return final


def expose_also(model: onnx.ModelProto, names: Sequence[str]) -> None:
    """Make ``model`` also return ``names`` (untyped: ONNX Runtime takes each tensor's own type)."""
    exposed = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in exposed)
