"""The ``loop`` layout: step 1 unrolled, steps 2…T in one ONNX ``Loop`` whose body is one step.

The graph's size no longer grows with T (step-major, a ResNet-50 at T = 256 has 39k nodes and
ONNX Runtime takes minutes to load it). Step 1 runs in the main graph exactly as the step-major
layout emits it, so shape queries of time-varying tensors, and what they feed, stay outside the
loop; the body reads step 1's results and every time-invariant tensor from the outer scope and
carries, from one step to the next, each neuron's membrane, each MaxPool gate's accumulated input,
each rate encoder's membrane and each read-out cut's running sum. The read-out is taken after
the loop, as in step-major; with ``per_step`` the body also applies the head to the read-out
after t steps and emits it as a scan output, stacked after step 1's.

The neurons are the portable ones. A ``Loop`` runs on every provider, but its control flow runs on
the CPU: CUDA graphs cannot capture it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.contract import PER_STEP_HEAD, PER_STEP_SUFFIX, loop_step_name, readout_name, step_name
from icsnn_onnx.neurons import IF, NeuronKind
from icsnn_onnx.passes.insert_neurons import is_neuron, site_kind
from icsnn_onnx.passes.program import EncodingKind
from icsnn_onnx.passes.unroll.builder import UnitWiring
from icsnn_onnx.passes.unroll.emitter import Emitter
from icsnn_onnx.passes.unroll.stateful import site_inputs

LOOP_NODE = "icsnn_steps"

Wiring = list[tuple[gs.Node, list[gs.Tensor], list[gs.Tensor]]]
Key = tuple[str, str]  # (kind of state, what it belongs to)


@dataclass
class _Step:
    streams: dict[str, gs.Tensor] = field(default_factory=dict)  # stream → its tensor at this step
    state: dict[Key, gs.Tensor] = field(default_factory=dict)  # state after this step
    v0: dict[str, gs.Tensor] = field(default_factory=dict)  # neuron output → v(0)


class Loop(Emitter):
    def run(self) -> None:
        self._outer_outputs = list(self.graph.outputs)
        self._clocks: dict[str, gs.Variable] = {}  # the body's step number: "count", and by float type
        self._rates: dict[str, gs.Tensor] = {}
        self._noise: dict[str, np.ndarray] = {}
        wiring = self._take_body()
        first = self._emit_step(wiring, None, lambda base: step_name(base, 1))
        for name in self.plan.structural:  # shape queries read step 1, as in step-major
            node = self.by_name[name]
            for i, tensor in enumerate(list(node.inputs)):
                node.inputs[i] = first.streams.get(tensor.name, tensor)
        final, self._scans = self._emit_loop(wiring, first)
        for cut in self.plan.cuts:
            if cut in self.readout:
                self.membranes[(cut, 1)] = first.state[("v", cut)]
                self.membranes[(cut, self.T)] = final[("v", cut)]
                self.membranes[(cut, 0)] = first.v0[cut]
            if self.per_step:
                self._finish_read_out(self.tensors[cut], 1, first.state[("sum", cut)])
            self._finish_read_out(self.tensors[cut], self.T, final[("sum", cut)])

    def _emit_step(self, wiring: Wiring, carried: dict | None, name: Callable[[str], str]) -> _Step:
        """One time step: step 1 in the main graph (``carried`` None), or the loop body's."""
        step = _Step()
        for x_name, enc in self.encoders.items():
            x = self.tensors[x_name]
            if carried is None:
                self._rates[x_name] = self._normalized(x, enc)
            rate = self._rates[x_name]
            dtype = np.dtype(x.dtype or np.float32)
            if enc.kind is EncodingKind.RATE:
                key = ("v", f"{x_name}.encoder")
                v0 = self._const(f"{x_name}.encoder_v_init", enc.v_init, dtype)
                theta = self._const(f"{x_name}.encoder_threshold", 1.0, dtype)
                spikes = gs.Variable(name(f"{x_name}.spikes"), x.dtype, x.shape)
                v_next = gs.Variable(name(f"{x_name}.encoder.v"), x.dtype, x.shape)
                v = v0 if carried is None else carried[key]
                self._neuron_step(
                    IF, name(f"{x_name}.encoder"), {"v": v}, rate, {"theta": theta}, spikes, {"v": v_next}
                )
                step.state[key] = v_next
            else:
                if carried is None:
                    self._noise[x_name] = self._poisson_noise(x, enc)
                    noise_t: gs.Tensor = gs.Constant(name(f"{x_name}.noise"), self._noise[x_name][0])
                else:
                    later = self._const(f"{x_name}.noise_after_step_1", self._noise[x_name][1:], dtype)
                    noise_t = gs.Variable(name(f"{x_name}.noise"), x.dtype, [1, *x.shape[1:]])
                    self._add(
                        "Gather",
                        name(f"{x_name}.noise"),
                        [later, carried["iteration"]],
                        [noise_t],
                        attrs={"axis": 0},
                    )
                spikes = self._poisson_spikes(x, rate, noise_t, name)
            step.streams[x_name] = self._decoded(x, enc, spikes, name)

        def at(tensor: gs.Tensor) -> gs.Tensor:
            return step.streams[tensor.name] if tensor.name in self.plan.streams else tensor

        for item in wiring:
            if isinstance(item, UnitWiring):
                self._unit_loop_step(item, step, carried, at, name)
                continue
            node, inputs, outputs = item
            y = outputs[0]
            if node.name in self.gates:
                key = ("acc", node.name)
                previous = None if carried is None else carried[key]
                step.streams[y.name], step.state[key] = self._gate_step(
                    node, y, previous, at(inputs[0]), name
                )
            elif is_neuron(node):
                kind = site_kind(node)
                parameters, initial = site_inputs(kind, inputs)
                keys = {s: _neuron_key(kind, s, y.name) for s in kind.states}
                out = gs.Variable(name(y.name), y.dtype, y.shape)
                after = {s: gs.Variable(name(f"{node.name}.{s}"), y.dtype, y.shape) for s in kind.states}
                before = {s: initial[s] if carried is None else carried[keys[s]] for s in kind.states}
                clock = None
                if kind.step_count:
                    dtype = np.dtype(y.dtype or np.float32)
                    clock = self._clock(1, dtype) if carried is None else self._body_clock(carried, dtype)
                self._neuron_step(
                    kind, name(node.name), before, at(inputs[0]), parameters, out, after, None, clock
                )
                step.streams[y.name], step.v0[y.name] = out, initial[kind.membrane]
                step.state.update({keys[s]: after[s] for s in kind.states})
            else:
                clones = self._clone(node, [at(i) for i in inputs], outputs, name(""))
                step.streams.update({o.name: c for o, c in zip(outputs, clones, strict=True)})
        for cut in self.plan.cuts:
            value = step.streams[cut]
            if carried is not None:
                total = gs.Variable(name(readout_name(cut, "sum")), value.dtype, value.shape)
                self._add("Add", name(readout_name(cut, "sum")), [carried[("sum", cut)], value], [total])
                value = total
            step.state[("sum", cut)] = value
        return step

    def _emit_loop(self, wiring: Wiring, first: _Step) -> tuple[dict[Key, gs.Tensor], dict[str, gs.Tensor]]:
        """Steps 2…T: a Loop carrying ``first``'s state; returns the state after step T and, with
        ``per_step``, each output's stacked read-outs after steps 2…T."""
        outer, keys = self.graph, list(first.state)
        body = gs.Graph(name=f"{LOOP_NODE}_body", opset=outer.opset)
        iteration = gs.Variable(f"{LOOP_NODE}.iteration", np.int64, [])
        cond_in = gs.Variable(f"{LOOP_NODE}.condition", np.bool_, [])
        carried: dict = {k: gs.Variable(_state_name(k, "in"), first.state[k].dtype, None) for k in keys}
        carried["iteration"] = iteration
        body.inputs = [iteration, cond_in, *(carried[k] for k in keys)]
        self.graph = body
        cond_out = gs.Variable(loop_step_name(f"{LOOP_NODE}.condition"), np.bool_, [])
        self._add("Identity", loop_step_name(f"{LOOP_NODE}.condition"), [cond_in], [cond_out])
        step = self._emit_step(wiring, carried, loop_step_name)
        scans = self._body_read_outs(step, first, iteration) if self.per_step else {}
        body.outputs = [cond_out, *(step.state[k] for k in keys), *scans.values()]
        self.graph = outer
        final = {
            k: gs.Variable(
                step_name(_state_name(k, "state"), self.T), first.state[k].dtype, first.state[k].shape
            )
            for k in keys
        }
        stacked = {
            y: gs.Variable(f"{y}.after_steps_2_to_{self.T}", s.dtype, _stacked(s.shape, self.T - 1))
            for y, s in scans.items()
        }
        self._add(
            "Loop",
            LOOP_NODE,
            [
                self._const(f"{LOOP_NODE}.trip_count", self.T - 1),
                gs.Variable.empty(),
                *(first.state[k] for k in keys),
            ],
            [*(final[k] for k in keys), *stacked.values()],
            attrs={"body": body},
        )
        return final, stacked

    def _unit_loop_step(
        self, unit: UnitWiring, step: _Step, carried: dict | None, at: Callable, name: Callable[[str], str]
    ) -> None:
        """A compensated unit's step 1 (``carried`` None) or the body's, carrying each input's
        running sum and each output's t·g."""
        sums = {x.name: carried[("ecm_sum", x.name)] for x in unit.inputs} if carried else {}
        scaled = {o.name: carried[("ecm_scaled", o.name)] for o in unit.outputs} if carried else {}
        values = self._unit_step(
            unit,
            1 if carried is None else 0,
            at,
            sums,
            scaled,
            name,
            lambda dtype: self._body_clock(carried, dtype),
            lambda dtype: self._body_inverse(carried, dtype),
        )
        step.streams.update(values)
        step.state.update({("ecm_sum", x): v for x, v in sums.items()})
        step.state.update({("ecm_scaled", o): v for o, v in scaled.items()})

    def _body_inverse(self, carried: dict, dtype: np.dtype) -> gs.Tensor:
        """Inside the body: 1/t in a float type (once per type)."""
        name = loop_step_name(f"{LOOP_NODE}.inverse_clock_{dtype}")
        if name not in self._clocks:
            inverse = gs.Variable(name, dtype, [])
            self._add("Reciprocal", name, [self._body_clock(carried, dtype)], [inverse])
            self._clocks[name] = inverse
        return self._clocks[name]

    def _body_clock(self, carried: dict, dtype: np.dtype) -> gs.Tensor:
        """Inside the body: the step number t = iteration + 2 as a float scalar (once per type)."""
        name = loop_step_name(f"{LOOP_NODE}.clock_{dtype}")
        if name not in self._clocks:
            count = self._clocks.get("count")
            if count is None:
                count = self._clocks["count"] = gs.Variable(
                    loop_step_name(f"{LOOP_NODE}.clock"), np.int64, []
                )
                self._add(
                    "Add",
                    loop_step_name(f"{LOOP_NODE}.clock"),
                    [carried["iteration"], self._const(f"{LOOP_NODE}.two", 2)],
                    [count],
                )
            clock = gs.Variable(name, dtype, [])
            self._add("CastLike", name, [count, self._const(f"{LOOP_NODE}.one_{dtype}", 1.0, dtype)], [clock])
            self._clocks[name] = clock
        return self._clocks[name]

    def _body_read_outs(self, step: _Step, first: _Step, iteration: gs.Tensor) -> dict[str, gs.Tensor]:
        """Inside the body: each graph output after t = iteration + 2 steps (the head applied to
        the read-out of the first t steps)."""
        count = gs.Variable(loop_step_name(f"{LOOP_NODE}.step_count"), np.int64, [])
        self._add(
            "Add",
            loop_step_name(f"{LOOP_NODE}.step_count"),
            [iteration, self._const(f"{LOOP_NODE}.two", 2)],
            [count],
        )
        values: dict[str, gs.Tensor] = {}
        inverse: dict[np.dtype, gs.Tensor] = {}
        for cut in self.plan.cuts:
            tensor = self.tensors[cut]
            dtype = np.dtype(tensor.dtype or np.float32)
            if dtype not in inverse:
                as_float = gs.Variable(loop_step_name(f"{LOOP_NODE}.step_count_{dtype}"), dtype, [])
                self._add(
                    "CastLike",
                    loop_step_name(f"{LOOP_NODE}.step_count_{dtype}"),
                    [count, self._const(f"{LOOP_NODE}.one_{dtype}", 1.0, dtype)],
                    [as_float],
                )
                inverse[dtype] = gs.Variable(loop_step_name(f"{LOOP_NODE}.inverse_{dtype}"), dtype, [])
                self._add(
                    "Reciprocal", loop_step_name(f"{LOOP_NODE}.inverse_{dtype}"), [as_float], [inverse[dtype]]
                )
            value = gs.Variable(loop_step_name(readout_name(cut, "mean")), tensor.dtype, tensor.shape)
            membranes = (step.state[("v", cut)], first.v0[cut]) if cut in self.readout else None
            self._read_out_value(
                tensor, step.state[("sum", cut)], inverse[dtype], value, membranes, loop_step_name
            )
            values[cut] = value
        for node in (self.by_name[n] for n in self.plan.head):
            inputs = [values.get(i.name, i) for i in node.inputs]
            clones = self._clone(node, inputs, list(node.outputs), loop_step_name(PER_STEP_HEAD))
            values.update({o.name: c for o, c in zip(node.outputs, clones, strict=True)})
        scans = {}
        for y in self.graph_outputs:
            value = values.get(y.name, y)
            if value is y:  # an output that does not depend on time: the same at every step
                value = gs.Variable(loop_step_name(f"{y.name}.after"), y.dtype, y.shape)
                self._add("Identity", loop_step_name(f"{y.name}.after"), [y], [value])
            scans[y.name] = value
        return scans

    def add_per_step_outputs(self) -> dict[str, str]:
        """``y_per_step`` = the read-out after step 1, then the loop's after steps 2…T."""
        head = [self.by_name[n] for n in self.plan.head]
        values = {c: self.prefix_means[(c, 1)] for c in self.plan.cuts}
        for node in head:
            inputs = [values.get(i.name, i) for i in node.inputs]
            outputs = self._clone(node, inputs, list(node.outputs), step_name(PER_STEP_HEAD, 1))
            values.update({o.name: c for o, c in zip(node.outputs, outputs, strict=True)})
        names: dict[str, str] = {}
        for y in list(self.graph.outputs):
            first = values.get(y.name, y)
            axes = self._const(f"{y.name}.stack_axes", [0])
            one = gs.Variable(step_name(f"{y.name}.step", 1), y.dtype, _stacked(y.shape, 1))
            self._add("Unsqueeze", step_name(f"{y.name}.step", 1), [first, axes], [one])
            stacked = gs.Variable(
                self._free_name(f"{y.name}{PER_STEP_SUFFIX}"), y.dtype, _stacked(y.shape, self.T)
            )
            self._add("Concat", stacked.name, [one, self._scans[y.name]], [stacked], attrs={"axis": 0})
            self.graph.outputs.append(stacked)
            names[y.name] = stacked.name
        return names

    @property
    def graph_outputs(self) -> list[gs.Tensor]:
        return self._outer_outputs


def _neuron_key(kind: NeuronKind, state: str, tensor: str) -> Key:
    """The carried-state key of a neuron's state: ``("v", y)`` for the membrane (what the
    read-out reads), ``("neuron.<state>", y)`` for any other."""
    return ("v" if state == kind.membrane else f"neuron.{state}", tensor)


def _state_name(key: Key, role: str) -> str:
    kind, owner = key
    return f"{LOOP_NODE}.{kind}.{owner}.{role}"


def _stacked(shape: list | None, steps: int) -> list | None:
    return None if shape is None else [steps, *shape]
