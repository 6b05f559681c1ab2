"""The step-major layout: every per-step op cloned T times (tensors ``name@t``)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from icsnn_onnx.contract import (
    readout_name,
    step_name,
)
from icsnn_onnx.passes.insert_neurons import is_neuron
from icsnn_onnx.passes.unroll.builder import UnitWiring
from icsnn_onnx.passes.unroll.emitter import Emitter


class StepMajor(Emitter):
    def run(self) -> None:
        copies: dict[tuple[str, int], gs.Tensor] = {}  # (stream, t) → step-t tensor

        def at(tensor: gs.Tensor, t: int) -> gs.Tensor:
            return copies[(tensor.name, t)] if tensor.name in self.plan.streams else tensor

        for name, steps in self._encoded_inputs().items():
            copies.update({(name, t): x_t for t, x_t in enumerate(steps, start=1)})
        wiring = self._take_body()
        for item in wiring:
            if isinstance(item, UnitWiring):
                copies.update(self._unit_unrolled(item, at))
                continue
            node, inputs, outputs = item
            if is_neuron(node) or node.name in self.gates:
                y = outputs[0]
                outs = self._stateful_steps(node, inputs, y, [at(inputs[0], t) for t in range(1, self.T + 1)])
                copies.update({(y.name, t): out for t, out in enumerate(outs, start=1)})
                continue
            for t in range(1, self.T + 1):
                clones = self._clone(node, [at(i, t) for i in inputs], outputs, step_name("", t))
                copies.update({(o.name, t): c for o, c in zip(outputs, clones, strict=True)})
        for name in self.plan.structural:  # shape queries read step 1
            node = self.by_name[name]
            for i, tensor in enumerate(list(node.inputs)):
                node.inputs[i] = at(tensor, 1)
        for cut in self.plan.cuts:
            self._read_out(self.tensors[cut], [copies[(cut, t)] for t in range(1, self.T + 1)])

    def _read_out(self, cut: gs.Tensor, steps: list[gs.Tensor]) -> None:
        """Redefine ``cut`` from the sum of its step copies (and prefix sums if per-step)."""
        if not self.per_step:  # one variadic Sum: no Add chain T deep
            total = gs.Variable(readout_name(cut.name, "sum"), cut.dtype, cut.shape)
            self._add("Sum", readout_name(cut.name, "sum"), list(steps), [total])
            self._finish_read_out(cut, self.T, total)
            return
        total = steps[0]
        for t in range(1, self.T + 1):
            if t > 1:
                prefix = gs.Variable(step_name(readout_name(cut.name, "sum"), t), cut.dtype, cut.shape)
                self._add("Add", step_name(readout_name(cut.name, "sum"), t), [total, steps[t - 1]], [prefix])
                total = prefix
            self._finish_read_out(cut, t, total)
