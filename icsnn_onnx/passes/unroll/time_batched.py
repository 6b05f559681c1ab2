"""The time-batched layout: every per-step op once, on the T steps stacked along the batch axis."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from icsnn_onnx.contract import (
    readout_name,
    stacked_name,
    step_name,
)
from icsnn_onnx.passes.insert_neurons import is_neuron
from icsnn_onnx.passes.unroll.builder import UnitWiring
from icsnn_onnx.passes.unroll.emitter import Emitter


class TimeBatched(Emitter):
    def _stacked_shape(self, shape: list | None) -> list | None:
        return None if shape is None else [None, *shape[1:]]  # axis 0 is T·N

    def run(self) -> None:
        stacked: dict[str, gs.Tensor] = {}  # stream → its [T·N, …] tensor
        tiled: dict[str, gs.Tensor] = {}  # time-invariant activation → repeated T times on axis 0

        def tile(tensor: gs.Tensor) -> gs.Tensor:
            if tensor.name not in tiled:
                out = gs.Variable(f"{tensor.name}@tiled", tensor.dtype, self._stacked_shape(tensor.shape))
                self._add("Concat", f"{tensor.name}@tiled", [tensor] * self.T, [out], attrs={"axis": 0})
                tiled[tensor.name] = out
            return tiled[tensor.name]

        for name, steps in self._encoded_inputs().items():
            x = self.tensors[name]
            joined = gs.Variable(stacked_name(name), x.dtype, self._stacked_shape(x.shape))
            self._add("Concat", stacked_name(name), steps, [joined], attrs={"axis": 0})
            stacked[name] = joined

        def mapped_input(tensor: gs.Tensor, rank: int | None) -> gs.Tensor:
            if tensor.name in stacked:
                return stacked[tensor.name]
            if (
                isinstance(tensor, gs.Variable)
                and tensor.name
                and tensor.shape is not None
                and len(tensor.shape) == rank
            ):
                return tile(tensor)  # a per-sample activation computed once: repeat it per step
            return tensor

        wiring = self._take_body()
        for item in wiring:
            if isinstance(item, UnitWiring):
                ranks = [len(t.shape) for t in item.inputs if t.shape is not None]
                rank = max(ranks, default=None)
                stacked.update(
                    self._unit_stacked(item, lambda t, rank=rank: mapped_input(t, rank), self._stacked_shape)
                )
                continue
            node, inputs, outputs = item
            if is_neuron(node) or node.name in self.gates:
                z, y = inputs[0], outputs[0]
                if z.name in stacked:
                    currents = [
                        gs.Variable(step_name(f"{node.name}.input", t), z.dtype, z.shape)
                        for t in range(1, self.T + 1)
                    ]
                    self._add(
                        "Split",
                        f"{z.name}@split",
                        [stacked[z.name]],
                        currents,
                        attrs={"axis": 0, "num_outputs": self.T},
                    )
                else:  # hoisted input layer: the same current at every step
                    currents = [z] * self.T
                outs = self._stateful_steps(node, inputs, y, currents)
                joined = gs.Variable(stacked_name(y.name), y.dtype, self._stacked_shape(y.shape))
                self._add("Concat", stacked_name(y.name), outs, [joined], attrs={"axis": 0})
                stacked[y.name] = joined
                continue
            rank = max(
                (len(t.shape) for t in inputs if t.name in stacked and t.shape is not None), default=None
            )
            mapped = [mapped_input(tensor, rank) for tensor in inputs]
            clones = self._clone(node, mapped, outputs, stacked_name(""), self._stacked_shape)
            stacked.update({o.name: c for o, c in zip(outputs, clones, strict=True)})
        for cut in self.plan.cuts:
            self._read_out(self.tensors[cut], stacked[cut])

    def _read_out(self, cut: gs.Tensor, steps: gs.Tensor) -> None:
        """``cut`` from the sum over t of ``steps`` viewed as ``[T, N, …]``; prefixes if per-step."""
        rest = list(cut.shape[1:])
        by_step = gs.Variable(readout_name(cut.name, "by_step"), cut.dtype, [self.T, *cut.shape])
        self._add(
            "Reshape",
            readout_name(cut.name, "by_step"),
            [steps, self._const(readout_name(cut.name, "by_step_shape"), [self.T, -1, *rest])],
            [by_step],
        )
        axis0 = self._const(readout_name(cut.name, "axis0"), [0])
        if not self.per_step:
            total = gs.Variable(readout_name(cut.name, "sum"), cut.dtype, cut.shape)
            self._add(
                "ReduceSum", readout_name(cut.name, "sum"), [by_step, axis0], [total], attrs={"keepdims": 0}
            )
            self._finish_read_out(cut, self.T, total)
            return
        sums = gs.Variable(readout_name(cut.name, "cumsum"), cut.dtype, [self.T, *cut.shape])
        self._add(
            "CumSum",
            readout_name(cut.name, "cumsum"),
            [by_step, self._const(readout_name(cut.name, "cumsum_axis"), 0)],
            [sums],
        )
        parts = [
            gs.Variable(step_name(readout_name(cut.name, "prefix"), t), cut.dtype, [1, *cut.shape])
            for t in range(1, self.T + 1)
        ]
        self._add(
            "Split", readout_name(cut.name, "prefix"), [sums], parts, attrs={"axis": 0, "num_outputs": self.T}
        )
        for t, part in enumerate(parts, start=1):
            total = gs.Variable(step_name(readout_name(cut.name, "sum"), t), cut.dtype, cut.shape)
            self._add("Squeeze", step_name(readout_name(cut.name, "sum"), t), [part, axis0], [total])
            self._finish_read_out(cut, t, total)
