"""Unroll the single-step SNN over T time steps, in one of two layouts.

Common to both:

- Encoder (direct coding): the analog input is the input current at every step, so every
  time-invariant node (the input layer up to the first neurons) is computed once — hoisted out
  of the time loop — and shared by all steps.
- Neurons: each site becomes T steps ``IFNeuron(v(t-1), z(t), θ) -> (out(t), v(t))`` with v(0)
  the site's initial potential; only these recurrences are inherently sequential.
- Read-out: every cut tensor ``c`` (see :mod:`.temporal`) is redefined as the mean over the T
  steps under its original name, so the head (e.g. a final Softmax) and the graph outputs read it
  unchanged: same output names, shapes and dtypes as the ANN.
- ``per_step``: for each output ``y`` an extra output ``y_per_step`` of shape ``[T, *shape(y)]``
  whose entry t-1 is the read-out after the first t steps (the head applied to each prefix mean).

Layouts:

- ``step-major`` (the reference): every per-step op is cloned T times (tensors ``name@t``).
- ``time-batched``: every per-step op runs once on the T steps stacked along the batch axis
  (``[T·N, …]``), so convolutions and GEMMs are few and large; a neuron splits its input current
  into T slices, runs its T steps and concatenates the outputs. Exact when every per-step op treats
  axis 0 as a batch (:mod:`.layout`); ``auto`` uses it then and step-major otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx import neuron
from icsnn_onnx.contract import PER_STEP_OUTPUTS_KEY, PER_STEP_SUFFIX
from icsnn_onnx.errors import ConversionError
from icsnn_onnx.passes import Pass, PassResult, require
from icsnn_onnx.passes.graph_utils import detach
from icsnn_onnx.passes.insert_neurons import is_neuron
from icsnn_onnx.passes.layout import batch_fold_blocker
from icsnn_onnx.passes.temporal import TemporalPlan, analyze
from icsnn_onnx.program import Program

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "time-batched", "step-major")


class Unroll(Pass):
    def __init__(self, T: int, per_step: bool = False, layout: str = "step-major") -> None:
        if T < 1:
            raise ValueError("T must be >= 1")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.T, self.per_step, self.layout = T, per_step, layout

    def requires(self, program: Program) -> None:
        require(any(is_neuron(n) for n in program.graph.nodes), self.name, "no IFNeuron to unroll")

    def ensures(self, program: Program) -> None:
        for node in program.graph.nodes:
            if is_neuron(node):
                require(
                    len(node.inputs) == 3 and len(node.outputs) == 2, self.name, f"{node.name} not unrolled"
                )

    def call(self, program: Program) -> PassResult:
        graph = program.graph
        plan, blocked = analyze(graph, is_neuron)
        require(not blocked, self.name, f"unsupported nodes reached unroll: {blocked}")
        layout = self._choose_layout(graph, plan)
        emitter = (_TimeBatched if layout == "time-batched" else _StepMajor)(
            graph, plan, self.T, self.per_step
        )
        emitter.run()
        if self.per_step:
            program.metadata[PER_STEP_OUTPUTS_KEY] = ",".join(emitter.add_per_step_outputs())
        program.metadata["icsnn.layout"] = layout
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(program, True)

    def _choose_layout(self, graph: gs.Graph, plan: TemporalPlan) -> str:
        if self.layout == "step-major":
            return "step-major"
        blockers = time_batch_blockers(graph, plan)
        if not blockers:
            return "time-batched"
        if self.layout == "time-batched":
            raise ConversionError(f"time-batched layout not applicable: {'; '.join(blockers)}")
        logger.warning("using the step-major layout: %s", blockers[0])
        return "step-major"


def time_batch_blockers(graph: gs.Graph, plan: TemporalPlan) -> list[str]:
    """Why the time-batched layout would not be exact for this graph (empty if it is)."""
    blockers = [f"{name}: reads the shape of a time-varying tensor" for name in plan.structural]
    by_name = {n.name: n for n in graph.nodes}
    for name in plan.body:
        node = by_name[name]
        if name in plan.neurons:
            continue
        streams = [isinstance(t, gs.Variable) and t.name in plan.streams for t in node.inputs]
        reason = batch_fold_blocker(node, streams)
        if reason:
            blockers.append(f"{name} ({node.op}): {reason}")
    tensors = graph.tensors()
    for cut in plan.cuts:
        shape = tensors[cut].shape
        if shape is None or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            blockers.append(f"read-out {cut} has dynamic non-batch dimensions")
    return blockers


class _Emitter:
    """What both layouts share: node creation, neuron steps, per-step outputs."""

    def __init__(self, graph: gs.Graph, plan: TemporalPlan, T: int, per_step: bool) -> None:
        self.graph, self.plan, self.T, self.per_step = graph, plan, T, per_step
        self.by_name = {n.name: n for n in graph.nodes}
        self.tensors = graph.tensors()
        self.prefix_means: dict[tuple[str, int], gs.Tensor] = {}  # (cut, t) → mean of steps 1..t

    def run(self) -> None:
        raise NotImplementedError

    def _add(
        self, op: str, name: str, inputs: list[gs.Tensor], outputs: list[gs.Tensor], **kw: object
    ) -> None:
        self.graph.nodes.append(gs.Node(op, name, inputs=inputs, outputs=outputs, **kw))

    def _const(self, name: str, value: object, dtype: object = np.int64) -> gs.Constant:
        return gs.Constant(name, np.asarray(value, dtype=dtype))

    def _take_body(self) -> list[tuple[gs.Node, list[gs.Tensor], list[gs.Tensor]]]:
        """Detach the per-step nodes, returning their wiring (they are re-emitted per layout)."""
        body = [self.by_name[n] for n in self.plan.body]
        wiring = [(n, list(n.inputs), list(n.outputs)) for n in body]
        for node in body:
            detach(node)
        return wiring

    def _clone(
        self,
        node: gs.Node,
        inputs: list[gs.Tensor],
        outputs: list[gs.Tensor],
        suffix: str,
        shape: Callable[[list | None], list | None] = lambda s: s,
    ) -> list[gs.Variable]:
        """Emit a copy of ``node`` reading ``inputs``; its outputs are named ``<output><suffix>``."""
        clones = [gs.Variable(f"{o.name}{suffix}", o.dtype, shape(o.shape)) for o in outputs]
        self._add(node.op, f"{node.name}{suffix}", inputs, clones, attrs=dict(node.attrs), domain=node.domain)
        return clones

    def _neuron_steps(
        self, node: gs.Node, inputs: list[gs.Tensor], y: gs.Tensor, currents: list[gs.Tensor]
    ) -> list[gs.Tensor]:
        """Emit the T steps of one neuron site writing ``y``; return out(1..T)."""
        _, theta, v = inputs
        outs = []
        for t, z_t in enumerate(currents, start=1):
            out = gs.Variable(f"{y.name}@{t}", y.dtype, y.shape)
            v_t = gs.Variable(f"{node.name}.v@{t}", y.dtype, y.shape)
            self._add(neuron.OP_TYPE, f"{node.name}@{t}", [v, z_t, theta], [out, v_t], domain=neuron.DOMAIN)
            outs.append(out)
            v = v_t
        return outs

    def add_per_step_outputs(self) -> list[str]:
        """Add ``y_per_step`` = stack over t of the read-out after t steps, for every output."""
        head = [self.by_name[n] for n in self.plan.head]
        per_t: list[dict[str, gs.Tensor]] = []  # per t: original tensor name → its t-prefix value
        for t in range(1, self.T + 1):
            values = {c: self.prefix_means[(c, t)] for c in self.plan.cuts}
            if t < self.T:
                for node in head:
                    inputs = [values.get(i.name, i) for i in node.inputs]
                    outputs = self._clone(node, inputs, list(node.outputs), f".after@{t}")
                    values.update({o.name: c for o, c in zip(node.outputs, outputs, strict=True)})
            per_t.append(values)
        names = []
        for y in list(self.graph.outputs):
            steps = [y if t == self.T else per_t[t - 1].get(y.name, y) for t in range(1, self.T + 1)]
            axes = self._const(f"{y.name}.stack_axes", [0])
            slices = []
            for t, value in enumerate(steps, start=1):
                shape = None if value.shape is None else [1, *value.shape]
                s = gs.Variable(f"{y.name}.step@{t}", y.dtype, shape)
                self._add("Unsqueeze", f"{y.name}.step@{t}", [value, axes], [s])
                slices.append(s)
            shape = None if y.shape is None else [self.T, *y.shape]
            stacked = gs.Variable(f"{y.name}{PER_STEP_SUFFIX}", y.dtype, shape)
            self._add("Concat", f"{y.name}{PER_STEP_SUFFIX}", slices, [stacked], attrs={"axis": 0})
            self.graph.outputs.append(stacked)
            names.append(stacked.name)
        return names


class _StepMajor(_Emitter):
    def run(self) -> None:
        copies: dict[tuple[str, int], gs.Tensor] = {}  # (stream, t) → step-t tensor

        def at(tensor: gs.Tensor, t: int) -> gs.Tensor:
            return copies[(tensor.name, t)] if tensor.name in self.plan.streams else tensor

        wiring = self._take_body()
        for node, inputs, outputs in wiring:
            if is_neuron(node):
                y = outputs[0]
                outs = self._neuron_steps(node, inputs, y, [at(inputs[0], t) for t in range(1, self.T + 1)])
                copies.update({(y.name, t): out for t, out in enumerate(outs, start=1)})
                continue
            for t in range(1, self.T + 1):
                clones = self._clone(node, [at(i, t) for i in inputs], outputs, f"@{t}")
                copies.update({(o.name, t): c for o, c in zip(outputs, clones, strict=True)})
        for name in self.plan.structural:  # shape queries read step 1
            node = self.by_name[name]
            for i, tensor in enumerate(list(node.inputs)):
                node.inputs[i] = at(tensor, 1)
        for cut in self.plan.cuts:
            self._read_out(self.tensors[cut], [copies[(cut, t)] for t in range(1, self.T + 1)])

    def _read_out(self, cut: gs.Tensor, steps: list[gs.Tensor]) -> None:
        """Redefine ``cut`` as the mean of its step copies, keeping prefix means if per-step."""
        dtype = np.dtype(cut.dtype or np.float32)
        acc = steps[0]
        for t in range(1, self.T + 1):
            if t > 1:
                total = gs.Variable(f"{cut.name}.sum@{t}", cut.dtype, cut.shape)
                self._add("Add", f"{cut.name}.sum@{t}", [acc, steps[t - 1]], [total])
                acc = total
            if t < self.T and not self.per_step:
                continue
            mean = cut if t == self.T else gs.Variable(f"{cut.name}.mean@{t}", cut.dtype, cut.shape)
            self._add(
                "Mul",
                f"{cut.name}.mean@{t}",
                [acc, self._const(f"{cut.name}.inv@{t}", 1.0 / t, dtype)],
                [mean],
            )
            self.prefix_means[(cut.name, t)] = mean


class _TimeBatched(_Emitter):
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

        wiring = self._take_body()
        for node, inputs, outputs in wiring:
            if is_neuron(node):
                z, y = inputs[0], outputs[0]
                if z.name in stacked:
                    currents = [gs.Variable(f"{z.name}@{t}", z.dtype, y.shape) for t in range(1, self.T + 1)]
                    self._add(
                        "Split",
                        f"{z.name}@split",
                        [stacked[z.name]],
                        currents,
                        attrs={"axis": 0, "num_outputs": self.T},
                    )
                else:  # hoisted input layer: the same current at every step
                    currents = [z] * self.T
                outs = self._neuron_steps(node, inputs, y, currents)
                joined = gs.Variable(f"{y.name}@T", y.dtype, self._stacked_shape(y.shape))
                self._add("Concat", f"{y.name}@T", outs, [joined], attrs={"axis": 0})
                stacked[y.name] = joined
                continue
            rank = max(
                (len(t.shape) for t in inputs if t.name in stacked and t.shape is not None), default=None
            )
            mapped = []
            for tensor in inputs:
                if tensor.name in stacked:
                    mapped.append(stacked[tensor.name])
                elif (
                    isinstance(tensor, gs.Variable)
                    and tensor.name
                    and tensor.shape is not None
                    and len(tensor.shape) == rank
                ):
                    mapped.append(tile(tensor))  # a per-sample activation computed once: repeat it per step
                else:
                    mapped.append(tensor)
            clones = self._clone(node, mapped, outputs, "@T", self._stacked_shape)
            stacked.update({o.name: c for o, c in zip(outputs, clones, strict=True)})
        for cut in self.plan.cuts:
            self._read_out(self.tensors[cut], stacked[cut])

    def _read_out(self, cut: gs.Tensor, steps: gs.Tensor) -> None:
        """``cut`` = mean over t of ``steps`` viewed as ``[T, N, …]``; prefix means if per-step."""
        dtype = np.dtype(cut.dtype or np.float32)
        rest = list(cut.shape[1:])
        by_step = gs.Variable(f"{cut.name}.by_step", cut.dtype, [self.T, *cut.shape])
        self._add(
            "Reshape",
            f"{cut.name}.by_step",
            [steps, self._const(f"{cut.name}.by_step_shape", [self.T, -1, *rest])],
            [by_step],
        )
        axis0 = self._const(f"{cut.name}.axis0", [0])
        self._add("ReduceMean", f"{cut.name}.mean", [by_step, axis0], [cut], attrs={"keepdims": 0})
        self.prefix_means[(cut.name, self.T)] = cut
        if not self.per_step:
            return
        sums = gs.Variable(f"{cut.name}.cumsum", cut.dtype, [self.T, *cut.shape])
        self._add(
            "CumSum", f"{cut.name}.cumsum", [by_step, self._const(f"{cut.name}.cumsum_axis", 0)], [sums]
        )
        counts = np.arange(1, self.T + 1, dtype=dtype).reshape([self.T] + [1] * len(cut.shape))
        means = gs.Variable(f"{cut.name}.prefix_means", cut.dtype, [self.T, *cut.shape])
        self._add(
            "Div", f"{cut.name}.prefix_means", [sums, gs.Constant(f"{cut.name}.counts", counts)], [means]
        )
        parts = [
            gs.Variable(f"{cut.name}.prefix@{t}", cut.dtype, [1, *cut.shape]) for t in range(1, self.T + 1)
        ]
        self._add("Split", f"{cut.name}.prefix", [means], parts, attrs={"axis": 0, "num_outputs": self.T})
        for t, part in enumerate(parts[:-1], start=1):
            mean = gs.Variable(f"{cut.name}.mean@{t}", cut.dtype, cut.shape)
            self._add("Squeeze", f"{cut.name}.mean@{t}", [part, axis0], [mean])
            self.prefix_means[(cut.name, t)] = mean
