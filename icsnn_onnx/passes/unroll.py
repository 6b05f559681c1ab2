"""Unroll the single-step SNN over T time steps (step-major layout).

- Encoder (direct coding): the analog input is the input current at every step, so every
  time-invariant node is computed once and shared by all steps.
- Body: for t = 1..T each per-step node is cloned (tensors renamed ``name@t``); each neuron
  becomes ``IFNeuron(v(t-1), z(t), θ) -> (out(t), v(t))`` with v(0) the site's initial potential.
- Read-out: every cut tensor ``c`` (see :mod:`.temporal`) is redefined as the running mean
  ``(1/T)·Σ_t c@t`` under its original name, so the head (e.g. a final Softmax) and the graph
  outputs read it unchanged: same output names, shapes and dtypes as the ANN.
- ``per_step``: for each output ``y`` an extra output ``y_per_step`` of shape ``[T, *shape(y)]``
  whose entry t-1 is the read-out after the first t steps (the head applied to each prefix mean).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx import neuron
from icsnn_onnx.contract import PER_STEP_OUTPUTS_KEY, PER_STEP_SUFFIX
from icsnn_onnx.passes import Pass, PassResult, require
from icsnn_onnx.passes.graph_utils import detach
from icsnn_onnx.passes.insert_neurons import is_neuron
from icsnn_onnx.passes.temporal import TemporalPlan, analyze
from icsnn_onnx.program import Program


class Unroll(Pass):
    def __init__(self, T: int, per_step: bool = False) -> None:
        if T < 1:
            raise ValueError("T must be >= 1")
        self.T = T
        self.per_step = per_step

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
        unroller = _Unroller(graph, plan, self.T, self.per_step)
        unroller.run()
        if self.per_step:
            names = unroller.add_per_step_outputs()
            program.metadata[PER_STEP_OUTPUTS_KEY] = ",".join(names)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(program, True)


class _Unroller:
    def __init__(self, graph: gs.Graph, plan: TemporalPlan, T: int, per_step: bool) -> None:
        self.graph, self.plan, self.T, self.per_step = graph, plan, T, per_step
        self.by_name = {n.name: n for n in graph.nodes}
        self.tensors = graph.tensors()
        self.copies: dict[tuple[str, int], gs.Tensor] = {}  # (stream name, t) → step-t tensor
        self.prefix_means: dict[tuple[str, int], gs.Tensor] = {}  # (cut name, t) → mean of 1..t

    def at(self, tensor: gs.Tensor, t: int) -> gs.Tensor:
        """The step-t version of a tensor (itself when time-invariant)."""
        if tensor.name in self.plan.streams:
            return self.copies[(tensor.name, t)]
        return tensor

    def _add(
        self, op: str, name: str, inputs: list[gs.Tensor], outputs: list[gs.Tensor], **kw: object
    ) -> None:
        self.graph.nodes.append(gs.Node(op, name, inputs=inputs, outputs=outputs, **kw))

    def run(self) -> None:
        body = [self.by_name[n] for n in self.plan.body]
        wiring = [(n, list(n.inputs), list(n.outputs)) for n in body]
        for node in body:
            detach(node)  # replaced by per-step clones
        potential: dict[str, gs.Tensor] = {}
        for t in range(1, self.T + 1):
            for node, inputs, outputs in wiring:
                if is_neuron(node):
                    z, theta, v0 = inputs
                    y = outputs[0]
                    out = gs.Variable(f"{y.name}@{t}", y.dtype, y.shape)
                    v_t = gs.Variable(f"{node.name}.v@{t}", y.dtype, y.shape)
                    self._add(
                        neuron.OP_TYPE,
                        f"{node.name}@{t}",
                        [potential.get(node.name, v0), self.at(z, t), theta],
                        [out, v_t],
                        domain=neuron.DOMAIN,
                    )
                    potential[node.name] = v_t
                    self.copies[(y.name, t)] = out
                    continue
                clones = [gs.Variable(f"{o.name}@{t}", o.dtype, o.shape) for o in outputs]
                self._add(
                    node.op,
                    f"{node.name}@{t}",
                    [self.at(i, t) for i in inputs],
                    clones,
                    attrs=dict(node.attrs),
                    domain=node.domain,
                )
                for o, clone in zip(outputs, clones, strict=True):
                    self.copies[(o.name, t)] = clone
        for name in self.plan.structural:  # shape queries read step 1
            node = self.by_name[name]
            for i, tensor in enumerate(list(node.inputs)):
                node.inputs[i] = self.at(tensor, 1)
        for cut in self.plan.cuts:
            self._read_out(self.tensors[cut])

    def _read_out(self, cut: gs.Tensor) -> None:
        """Redefine ``cut`` as the mean of its step copies, keeping prefix means if per-step."""
        dtype = np.dtype(cut.dtype or np.float32)
        acc = self.copies[(cut.name, 1)]
        for t in range(1, self.T + 1):
            if t > 1:
                total = gs.Variable(f"{cut.name}.sum@{t}", cut.dtype, cut.shape)
                self._add("Add", f"{cut.name}.sum@{t}", [acc, self.copies[(cut.name, t)]], [total])
                acc = total
            if t < self.T and not self.per_step:
                continue
            mean = cut if t == self.T else gs.Variable(f"{cut.name}.mean@{t}", cut.dtype, cut.shape)
            inv_t = gs.Constant(f"{cut.name}.inv@{t}", np.asarray(1.0 / t, dtype=dtype))
            self._add("Mul", f"{cut.name}.mean@{t}", [acc, inv_t], [mean])
            self.prefix_means[(cut.name, t)] = mean

    def add_per_step_outputs(self) -> list[str]:
        """Add ``y_per_step`` = stack over t of the read-out after t steps, for every output."""
        head = [self.by_name[n] for n in self.plan.head]
        per_t: list[dict[str, gs.Tensor]] = []  # per t: original tensor name → its t-prefix value
        for t in range(1, self.T + 1):
            values = {c: self.prefix_means[(c, t)] for c in self.plan.cuts}
            if t < self.T:
                for node in head:
                    inputs = [values.get(i.name, i) for i in node.inputs]
                    outputs = [gs.Variable(f"{o.name}.after@{t}", o.dtype, o.shape) for o in node.outputs]
                    self._add(
                        node.op,
                        f"{node.name}.after@{t}",
                        inputs,
                        outputs,
                        attrs=dict(node.attrs),
                        domain=node.domain,
                    )
                    values.update({o.name: c for o, c in zip(node.outputs, outputs, strict=True)})
            per_t.append(values)
        names = []
        for y in list(self.graph.outputs):
            steps = [y if t == self.T else per_t[t - 1].get(y.name, y) for t in range(1, self.T + 1)]
            axes = gs.Constant(f"{y.name}.stack_axes", np.asarray([0], np.int64))
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
