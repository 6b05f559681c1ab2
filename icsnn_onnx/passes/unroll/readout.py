"""The read-out: each cut's mean over the steps (or the compensated membrane through the
site's activation, Alg 3), and per-step outputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.contract import (
    PER_STEP_HEAD,
    PER_STEP_SUFFIX,
    readout_name,
    step_name,
)
from icsnn_onnx.passes.program import TransferFunction
from icsnn_onnx.passes.unroll.builder import Builder


class ReadOut(Builder):
    def _finish_read_out(self, cut: gs.Tensor, t: int, total: gs.Tensor) -> None:
        """The read-out of ``cut`` after ``t`` steps, from the sum of its first ``t`` steps.

        Plain: the mean ``Σ out / t``. Compensated (a neuron output, Alg 3): the neuron's
        integrated membrane ``(Σ out + v(t) − v(0)) / t = Σ z / t`` — spike count plus residual —
        through the site's activation function, so the last neurons lose nothing to integer
        spike counts (docs/method.md §5).
        """
        dtype = np.dtype(cut.dtype or np.float32)
        value = (
            cut
            if t == self.T
            else gs.Variable(step_name(readout_name(cut.name, "mean"), t), cut.dtype, cut.shape)
        )
        self.prefix_means[(cut.name, t)] = value
        inv = self._const(step_name(readout_name(cut.name, "inv"), t), 1.0 / t, dtype)
        membranes = None
        if cut.name in self.readout:
            membranes = self.membranes[(cut.name, t)], self.membranes[(cut.name, 0)]
        self._read_out_value(cut, total, inv, value, membranes, lambda base: step_name(base, t))

    def _read_out_value(
        self,
        cut: gs.Tensor,
        total: gs.Tensor,
        inv: gs.Tensor,
        value: gs.Tensor,
        membranes: tuple[gs.Tensor, gs.Tensor] | None,
        name: Callable[[str], str],
    ) -> None:
        """``value`` = the read-out of ``cut`` from the sum ``total`` of its first t steps and
        ``inv`` = 1/t; ``membranes`` = (v(t), v(0)) of a compensated cut; ``name`` tags nodes."""
        dtype = np.dtype(cut.dtype or np.float32)
        if cut.name not in self.readout:
            self._add("Mul", name(readout_name(cut.name, "mean")), [total, inv], [value])
            return
        transfer = self.readout[cut.name]
        v_t, v_0 = membranes
        residual = gs.Variable(name(readout_name(cut.name, "residual")), cut.dtype, cut.shape)
        self._add("Sub", name(readout_name(cut.name, "residual")), [v_t, v_0], [residual])
        integrated = gs.Variable(name(readout_name(cut.name, "integrated")), cut.dtype, cut.shape)
        self._add("Add", name(readout_name(cut.name, "integrated")), [total, residual], [integrated])
        if transfer is None:  # the neuron computes f itself: its integrated membrane is t·f(x̄)
            self._add("Mul", name(readout_name(cut.name, "membrane_mean")), [integrated, inv], [value])
            return
        mean = gs.Variable(name(readout_name(cut.name, "membrane_mean")), cut.dtype, cut.shape)
        self._add("Mul", name(readout_name(cut.name, "membrane_mean")), [integrated, inv], [mean])
        self._emit_transfer(transfer, mean, value, name(readout_name(cut.name, "readout")), dtype)

    def _emit_transfer(
        self, transfer: TransferFunction, x: gs.Tensor, y: gs.Tensor, name: str, dtype: np.dtype
    ) -> None:
        """``y = transfer(x)``: the ANN's own activation function, from its one table of ops."""
        steps = transfer.equations()
        value = x
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            node = name if len(steps) == 1 else f"{name}.{i}"
            out = y if last else gs.Variable(node, y.dtype, y.shape)
            constants = [self._const(f"{name}{suffix}", value_, dtype) for suffix, value_ in step.constants]
            self._add(step.op_type, node, [value, *constants], [out])
            value = out

    def add_per_step_outputs(self) -> dict[str, str]:
        """Add ``y_per_step`` = stack over t of the read-out after t steps, for every output;
        return output → its per-step output's (free) name."""
        head = [self.by_name[n] for n in self.plan.head]
        per_t: list[dict[str, gs.Tensor]] = []  # per t: original tensor name → its t-prefix value
        for t in range(1, self.T + 1):
            values = {c: self.prefix_means[(c, t)] for c in self.plan.cuts}
            if t < self.T:
                for node in head:
                    inputs = [values.get(i.name, i) for i in node.inputs]
                    outputs = self._clone(node, inputs, list(node.outputs), step_name(PER_STEP_HEAD, t))
                    values.update({o.name: c for o, c in zip(node.outputs, outputs, strict=True)})
            per_t.append(values)
        names: dict[str, str] = {}
        for y in list(self.graph.outputs):
            steps = [y if t == self.T else per_t[t - 1].get(y.name, y) for t in range(1, self.T + 1)]
            axes = self._const(f"{y.name}.stack_axes", [0])
            slices = []
            for t, value in enumerate(steps, start=1):
                shape = None if value.shape is None else [1, *value.shape]
                s = gs.Variable(step_name(f"{y.name}.step", t), y.dtype, shape)
                self._add("Unsqueeze", step_name(f"{y.name}.step", t), [value, axes], [s])
                slices.append(s)
            shape = None if y.shape is None else [self.T, *y.shape]
            stacked = gs.Variable(self._free_name(f"{y.name}{PER_STEP_SUFFIX}"), y.dtype, shape)
            self._add("Concat", stacked.name, slices, [stacked], attrs={"axis": 0})
            self.graph.outputs.append(stacked)
            names[y.name] = stacked.name
        return names
