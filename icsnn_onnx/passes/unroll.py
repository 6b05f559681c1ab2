"""Unroll the single-step SNN over T time steps, in one of two layouts.

Common to both:

- Encoder: under direct coding the analog input is the input current at every step, so every
  time-invariant node (the input layer up to the first neurons) is computed once — hoisted out
  of the time loop — and shared by all steps. Under rate/Poisson coding each encoded input gets
  T steps of spikes (:mod:`.encoding`) and is a stream from the start.
- Neurons: each site becomes T steps ``IFNeuron(v(t-1), z(t), θ) -> (out(t), v(t))`` with v(0)
  the site's initial potential; only these recurrences are inherently sequential. For the ``cpu``
  target, a float32 site of rank 4 with per-channel (or per-layer) θ and v(0) and a channel count
  that fills ONNX Runtime's blocked layout steps as ``IFNeuronChannelwise`` instead (the same
  neuron in Conv/Relu form, :mod:`icsnn_onnx.neuron`), its v(0) materialized in z's layout by a
  1×1 Conv so that even step 1 stays in that layout.
- MaxPool gates (``--maxpool gate``) are stateful like neurons: T steps, accumulator threaded.
- Read-out: every cut tensor ``c`` (see :mod:`.temporal`) is redefined under its original name as
  the mean over the T steps — or, for a neuron output under coding compensation, as its
  integrated membrane ``(Σ out + v(T) − v(0))/T`` through the site's activation function — so
  the head (e.g. a final Softmax) and the graph outputs read it unchanged: same output names,
  shapes and dtypes as the ANN.
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

import json
import logging
import zlib
from collections.abc import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx import neuron
from icsnn_onnx.contract import (
    CHANNELWISE_SITES_KEY,
    LAYOUT_KEY,
    PER_STEP_OF_KEY,
    PER_STEP_OUTPUTS_KEY,
    PER_STEP_SUFFIX,
    step_name,
)
from icsnn_onnx.errors import ConversionError
from icsnn_onnx.options import LAYOUTS, TARGETS
from icsnn_onnx.passes import Pass, PassResult, require
from icsnn_onnx.passes.graph_utils import detach, rename_duplicates
from icsnn_onnx.passes.insert_neurons import is_neuron
from icsnn_onnx.passes.layout import batch_fold_blocker
from icsnn_onnx.passes.scale import MAX_UNROLLED_OPS, ops_per_step
from icsnn_onnx.passes.temporal import TemporalPlan, analyze
from icsnn_onnx.program import EncodingKind, InputEncoder, Program, TransferFunction

logger = logging.getLogger(__name__)

# ONNX Runtime's CPU provider blocks channels by 8 (AVX2) or 16 (AVX-512); a channel count it
# cannot block would run the channelwise neuron's Convs unblocked, slower than elementwise ops.
CHANNEL_BLOCK = 16


class Unroll(Pass):
    def __init__(
        self,
        T: int,
        per_step: bool = False,
        layout: str = "step-major",
        compensation: bool = True,
        target: str = "portable",
    ) -> None:
        if T < 1:
            raise ValueError("T must be >= 1")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.T, self.per_step, self.layout = T, per_step, layout
        self.compensation, self.target = compensation, target

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
        gates = program.gates
        plan, blocked = analyze(
            graph, lambda n: is_neuron(n) or n.name in gates, stream_inputs=frozenset(program.encoders)
        )
        require(not blocked, self.name, f"unsupported nodes reached unroll: {blocked}")
        layout = self._choose_layout(graph, plan)
        readout = {}
        if self.compensation:
            readout = {s.output: s.transfer for s in program.sites.values() if s.output in plan.cuts}
        emitter = _emitter_class(layout)(
            graph, plan, self.T, self.per_step, readout, program.encoders, gates, self.target == "cpu"
        )
        emitter.run()
        if self.target == "cpu":
            program.metadata[CHANNELWISE_SITES_KEY] = str(len(emitter.channelwise_sites))
        if self.per_step:
            per_step = emitter.add_per_step_outputs()
            program.metadata[PER_STEP_OUTPUTS_KEY] = ",".join(per_step.values())
            program.metadata[PER_STEP_OF_KEY] = json.dumps(per_step)
        program.metadata[LAYOUT_KEY] = layout
        rename_duplicates(graph)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(program, True)

    def _choose_layout(self, graph: gs.Graph, plan: TemporalPlan) -> str:
        if self.layout == "step-major" or (self.layout == "loop" and self.T == 1):
            return "step-major"
        if self.layout == "loop":
            return "loop"
        if self.layout == "auto":
            neurons = sum(1 for name in plan.neurons if is_neuron(_node_by_name(graph, name)))
            others = len(plan.body) - len(plan.neurons)
            if ops_per_step(plan, neurons, others, self.per_step) * self.T > MAX_UNROLLED_OPS:
                return "loop"
        blockers = time_batch_blockers(graph, plan)
        if not blockers:
            return "time-batched"
        if self.layout == "time-batched":
            raise ConversionError(f"time-batched layout not applicable: {'; '.join(blockers)}")
        logger.warning("using the step-major layout: %s", blockers[0])
        return "step-major"


def _node_by_name(graph: gs.Graph, name: str) -> gs.Node:
    return next(n for n in graph.nodes if n.name == name)


def _emitter_class(layout: str) -> type[_Emitter]:
    if layout == "loop":
        from icsnn_onnx.passes.unroll_loop import Loop  # it builds on this module's emitter

        return Loop
    return _TimeBatched if layout == "time-batched" else _StepMajor


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

    def __init__(
        self,
        graph: gs.Graph,
        plan: TemporalPlan,
        T: int,
        per_step: bool,
        readout: Mapping[str, TransferFunction],
        encoders: Mapping[str, InputEncoder],
        gates: frozenset[str],
        channelwise: bool = False,
    ) -> None:
        self.graph, self.plan, self.T, self.per_step = graph, plan, T, per_step
        self.encoders, self.gates = encoders, gates
        self.channelwise = channelwise  # the cpu target: IFNeuronChannelwise where a site allows
        self.channelwise_sites: list[str] = []
        self.constants: dict[str, gs.Constant] = {}
        self.readout = readout  # compensated cut (a neuron output) → its activation function
        self.membranes: dict[tuple[str, int], gs.Tensor] = {}  # (neuron output, t) → v(t)
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
        """A named constant, created once (a name reused by later steps is the same tensor)."""
        if name not in self.constants:
            self.constants[name] = gs.Constant(name, np.asarray(value, dtype=dtype))
        return self.constants[name]

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

    def _stateful_steps(
        self, node: gs.Node, inputs: list[gs.Tensor], y: gs.Tensor, xs: list[gs.Tensor]
    ) -> list[gs.Tensor]:
        """Emit the T steps of a node with state over time (a neuron site or a MaxPool gate)."""
        if node.name in self.gates:
            return self._gate_steps(node, y, xs)
        return self._site_steps(node, inputs, y, xs)

    def _gate_steps(self, node: gs.Node, y: gs.Tensor, xs: list[gs.Tensor]) -> list[gs.Tensor]:
        """MaxPool ``gate`` policy: each window forwards the spikes of its unit with the highest
        input accumulated so far, ``acc(t) = Σ_{τ≤t} x(τ)`` (MaxPool's Indices on ``acc``, which
        index the flattened input)."""
        acc = None
        outs = []
        for t, x_t in enumerate(xs, start=1):
            out, acc = self._gate_step(node, y, acc, x_t, lambda base, t=t: step_name(base, t))
            outs.append(out)
        return outs

    def _gate_step(
        self, node: gs.Node, y: gs.Tensor, acc: gs.Tensor | None, x_t: gs.Tensor, name: Callable[[str], str]
    ) -> tuple[gs.Tensor, gs.Tensor]:
        """One step of a gate: ``(out(t), acc(t))`` from ``acc(t-1)`` (``None`` at step 1)."""
        flat_shape = self._const(f"{node.name}.flat_shape", [-1])
        if acc is None:
            acc_t = x_t
        else:
            acc_t = gs.Variable(name(f"{node.name}.acc"), x_t.dtype, x_t.shape)
            self._add("Add", name(f"{node.name}.acc"), [acc, x_t], [acc_t])
        pooled = gs.Variable(name(f"{node.name}.acc_max"), y.dtype, y.shape)
        winner = gs.Variable(name(f"{node.name}.winner"), np.int64, y.shape)
        self._add("MaxPool", name(f"{node.name}.winner"), [acc_t], [pooled, winner], attrs=dict(node.attrs))
        flat = gs.Variable(name(f"{node.name}.flat"), x_t.dtype, None)
        self._add("Reshape", name(f"{node.name}.flat"), [x_t, flat_shape], [flat])
        out = gs.Variable(name(y.name), y.dtype, y.shape)
        self._add("Gather", name(node.name), [flat, winner], [out], attrs={"axis": 0})
        return out, acc_t

    def _site_steps(
        self, node: gs.Node, inputs: list[gs.Tensor], y: gs.Tensor, currents: list[gs.Tensor]
    ) -> list[gs.Tensor]:
        """Emit the T steps of the (detached) neuron site ``node`` writing ``y``; return out(1..T)."""
        _, theta, v = inputs
        return self._neuron_steps(node.name, theta, v, y, currents)

    def _neuron_steps(
        self, name: str, theta: gs.Tensor, v: gs.Tensor, y: gs.Tensor, currents: list[gs.Tensor]
    ) -> list[gs.Tensor]:
        """Emit T steps of IF neurons ``name`` writing ``y@t``; return out(1..T)."""
        self.membranes[(y.name, 0)] = v
        channelwise = self._channelwise_inputs(name, theta, v, y, currents[0]) if self.channelwise else None
        if channelwise is not None:
            v, constants = channelwise
            self.channelwise_sites.append(name)
        outs = []
        for t, z_t in enumerate(currents, start=1):
            out = gs.Variable(step_name(y.name, t), y.dtype, y.shape)
            v_t = gs.Variable(step_name(f"{name}.v", t), y.dtype, y.shape)
            if channelwise is None:
                self._neuron_step(step_name(name, t), v, z_t, theta, out, v_t)
            else:
                self._add(
                    neuron.CHANNELWISE_OP_TYPE,
                    step_name(name, t),
                    [v, z_t, *constants],
                    [out, v_t],
                    attrs={"channels": y.shape[1]},
                    domain=neuron.DOMAIN,
                )
            outs.append(out)
            self.membranes[(y.name, t)] = v_t
            v = v_t
        return outs

    def _neuron_step(
        self, name: str, v: gs.Tensor, z: gs.Tensor, theta: gs.Tensor, out: gs.Tensor, v_next: gs.Tensor
    ) -> None:
        """One step of portable IF neurons: ``(out(t), v(t)) = IFNeuron(v(t-1), z(t), θ)``."""
        self._add(neuron.OP_TYPE, name, [v, z, theta], [out, v_next], domain=neuron.DOMAIN)

    def _channelwise_inputs(
        self, name: str, theta: gs.Tensor, v0: gs.Tensor, y: gs.Tensor, z_1: gs.Tensor
    ) -> tuple[gs.Tensor, list[gs.Constant]] | None:
        """For a site the channelwise neuron fits: v(0) materialized in z's layout (a 1×1 Conv of
        step 1's current with zero weights and v(0) as bias), and the neuron's Conv constants."""
        shape = y.shape
        if (
            np.dtype(y.dtype or np.float32) != np.float32
            or shape is None
            or len(shape) != 4
            or not isinstance(shape[1], int)
            or shape[1] % CHANNEL_BLOCK
            or not isinstance(theta, gs.Constant)
            or not isinstance(v0, gs.Constant)
        ):
            logger.debug(
                "%s: elementwise IF neuron (needs float32 [N, C, H, W], C %% %d == 0)", name, CHANNEL_BLOCK
            )
            return None
        channels = shape[1]
        per_channel = [_per_channel(c.values, channels) for c in (theta, v0)]
        if per_channel[0] is None or per_channel[1] is None:
            logger.debug("%s: elementwise IF neuron (θ and v(0) must be per channel)", name)
            return None
        threshold, v_init = per_channel
        try:
            parameters = neuron.channelwise_parameters(threshold)
        except ValueError as err:
            logger.debug("%s: elementwise IF neuron (%s)", name, err)
            return None
        constants = [
            self._const(f"{name}.{key}", parameters[key], np.float32) for key in neuron.CHANNELWISE_INPUTS[2:]
        ]
        v0_full = gs.Variable(step_name(f"{name}.v", 0), y.dtype, y.shape)
        self._add(
            "Conv",
            step_name(f"{name}.v", 0),
            [
                z_1,
                self._const(f"{name}.v0_weight", np.zeros((channels, 1, 1, 1)), np.float32),
                self._const(f"{name}.v0_bias", v_init, np.float32),
            ],
            [v0_full],
            attrs={"group": channels},
        )
        return v0_full, constants

    def _encoded_inputs(self) -> dict[str, list[gs.Tensor]]:
        """Emit the input encoders (rate or Poisson coding): graph input → its T steps."""
        return {name: self._encode(self.tensors[name], enc) for name, enc in self.encoders.items()}

    def _encode(self, x: gs.Tensor, enc: InputEncoder) -> list[gs.Tensor]:
        """``x(t) = low + (high − low)·s(t)`` with ``s`` the spikes of ``x``'s encoder."""
        dtype = np.dtype(x.dtype or np.float32)
        rate = self._normalized(x, enc)
        if enc.kind is EncodingKind.RATE:
            spikes = gs.Variable(f"{x.name}.spikes", x.dtype, x.shape)
            theta = self._const(f"{x.name}.encoder_threshold", 1.0, dtype)
            v0 = self._const(f"{x.name}.encoder_v_init", enc.v_init, dtype)
            steps = self._neuron_steps(f"{x.name}.encoder", theta, v0, spikes, [rate] * self.T)
        else:
            noise = self._poisson_noise(x, enc)
            steps = []
            for t in range(1, self.T + 1):
                noise_t = gs.Constant(step_name(f"{x.name}.noise", t), noise[t - 1])
                steps.append(self._poisson_spikes(x, rate, noise_t, lambda base, t=t: step_name(base, t)))
        return [
            self._decoded(x, enc, s_t, lambda base, t=t: step_name(base, t)) for t, s_t in enumerate(steps, 1)
        ]

    def _normalized(self, x: gs.Tensor, enc: InputEncoder) -> gs.Tensor:
        """``(x − low)/(high − low)``: the encoder's constant input, computed once."""
        dtype = np.dtype(x.dtype or np.float32)
        shifted = gs.Variable(f"{x.name}.shifted", x.dtype, x.shape)
        self._add("Sub", f"{x.name}.shifted", [x, self._const(f"{x.name}.low", enc.low, dtype)], [shifted])
        rate = gs.Variable(f"{x.name}.normalized", x.dtype, x.shape)
        inv_span = self._const(f"{x.name}.inv_span", 1.0 / (enc.high - enc.low), dtype)
        self._add("Mul", f"{x.name}.normalized", [shifted, inv_span], [rate])
        return rate

    def _poisson_noise(self, x: gs.Tensor, enc: InputEncoder) -> np.ndarray:
        """The seeded uniform noise ``[T, 1, *sample]`` a Poisson encoder compares against."""
        sample = list(x.shape[1:]) if x.shape is not None else None
        if sample is None or not all(isinstance(d, int) and d > 0 for d in sample):
            raise ConversionError(f"Poisson coding needs the non-batch dimensions of input {x.name} fixed")
        rng = np.random.default_rng([enc.seed, zlib.crc32(x.name.encode())])
        return rng.random((self.T, 1, *sample)).astype(np.dtype(x.dtype or np.float32))

    def _poisson_spikes(
        self, x: gs.Tensor, rate: gs.Tensor, noise_t: gs.Tensor, name: Callable[[str], str]
    ) -> gs.Tensor:
        fired = gs.Variable(name(f"{x.name}.fired"), np.bool_, x.shape)
        self._add("Less", name(f"{x.name}.fired"), [noise_t, rate], [fired])
        s_t = gs.Variable(name(f"{x.name}.spikes"), x.dtype, x.shape)
        self._add("CastLike", name(f"{x.name}.spikes"), [fired, rate], [s_t])
        return s_t

    def _decoded(
        self, x: gs.Tensor, enc: InputEncoder, s_t: gs.Tensor, name: Callable[[str], str]
    ) -> gs.Tensor:
        """What the network receives from spikes ``s(t)``: ``low + (high − low)·s(t)``."""
        dtype = np.dtype(x.dtype or np.float32)
        scaled = gs.Variable(name(f"{x.name}.scaled"), x.dtype, x.shape)
        self._add(
            "Mul",
            name(f"{x.name}.scaled"),
            [s_t, self._const(f"{x.name}.span", enc.high - enc.low, dtype)],
            [scaled],
        )
        x_t = gs.Variable(name(x.name), x.dtype, x.shape)
        self._add("Add", name(x.name), [scaled, self._const(f"{x.name}.low", enc.low, dtype)], [x_t])
        return x_t

    def _finish_read_out(self, cut: gs.Tensor, t: int, total: gs.Tensor) -> None:
        """The read-out of ``cut`` after ``t`` steps, from the sum of its first ``t`` steps.

        Plain: the mean ``Σ out / t``. Compensated (a neuron output, Alg 3): the neuron's
        integrated membrane ``(Σ out + v(t) − v(0)) / t = Σ z / t`` — spike count plus residual —
        through the site's activation function, so the last neurons lose nothing to integer
        spike counts (docs/method.md §5).
        """
        dtype = np.dtype(cut.dtype or np.float32)
        value = cut if t == self.T else gs.Variable(step_name(f"{cut.name}.mean", t), cut.dtype, cut.shape)
        self.prefix_means[(cut.name, t)] = value
        inv = self._const(step_name(f"{cut.name}.inv", t), 1.0 / t, dtype)
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
        transfer = self.readout.get(cut.name)
        if transfer is None:
            self._add("Mul", name(f"{cut.name}.mean"), [total, inv], [value])
            return
        v_t, v_0 = membranes
        residual = gs.Variable(name(f"{cut.name}.residual"), cut.dtype, cut.shape)
        self._add("Sub", name(f"{cut.name}.residual"), [v_t, v_0], [residual])
        integrated = gs.Variable(name(f"{cut.name}.integrated"), cut.dtype, cut.shape)
        self._add("Add", name(f"{cut.name}.integrated"), [total, residual], [integrated])
        mean = gs.Variable(name(f"{cut.name}.membrane_mean"), cut.dtype, cut.shape)
        self._add("Mul", name(f"{cut.name}.membrane_mean"), [integrated, inv], [mean])
        self._emit_transfer(transfer, mean, value, name(f"{cut.name}.readout"), dtype)

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
                    outputs = self._clone(node, inputs, list(node.outputs), step_name(".after", t))
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

    def _free_name(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2``, … if the graph already has a tensor so named."""
        taken = {t.name for n in self.graph.nodes for t in (*n.inputs, *n.outputs)}
        taken |= {t.name for t in (*self.graph.inputs, *self.graph.outputs)}
        free, k = name, 0
        while free in taken:
            k += 1
            free = f"{name}_{k}"
        return free


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as ``[C]`` if it is one number or one per channel of an ``[N, C, H, W]`` tensor."""
    value = np.asarray(value, np.float32)
    if value.size == 1:
        return np.full(channels, value.reshape(()), np.float32)
    dims = list(value.shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    return value.reshape(channels) if dims == [channels, 1, 1] else None


class _StepMajor(_Emitter):
    def run(self) -> None:
        copies: dict[tuple[str, int], gs.Tensor] = {}  # (stream, t) → step-t tensor

        def at(tensor: gs.Tensor, t: int) -> gs.Tensor:
            return copies[(tensor.name, t)] if tensor.name in self.plan.streams else tensor

        for name, steps in self._encoded_inputs().items():
            copies.update({(name, t): x_t for t, x_t in enumerate(steps, start=1)})
        wiring = self._take_body()
        for node, inputs, outputs in wiring:
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
            total = gs.Variable(f"{cut.name}.sum", cut.dtype, cut.shape)
            self._add("Sum", f"{cut.name}.sum", list(steps), [total])
            self._finish_read_out(cut, self.T, total)
            return
        total = steps[0]
        for t in range(1, self.T + 1):
            if t > 1:
                prefix = gs.Variable(step_name(f"{cut.name}.sum", t), cut.dtype, cut.shape)
                self._add("Add", step_name(f"{cut.name}.sum", t), [total, steps[t - 1]], [prefix])
                total = prefix
            self._finish_read_out(cut, t, total)


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

        for name, steps in self._encoded_inputs().items():
            x = self.tensors[name]
            joined = gs.Variable(f"{name}@T", x.dtype, self._stacked_shape(x.shape))
            self._add("Concat", f"{name}@T", steps, [joined], attrs={"axis": 0})
            stacked[name] = joined
        wiring = self._take_body()
        for node, inputs, outputs in wiring:
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
        """``cut`` from the sum over t of ``steps`` viewed as ``[T, N, …]``; prefixes if per-step."""
        rest = list(cut.shape[1:])
        by_step = gs.Variable(f"{cut.name}.by_step", cut.dtype, [self.T, *cut.shape])
        self._add(
            "Reshape",
            f"{cut.name}.by_step",
            [steps, self._const(f"{cut.name}.by_step_shape", [self.T, -1, *rest])],
            [by_step],
        )
        axis0 = self._const(f"{cut.name}.axis0", [0])
        if not self.per_step:
            total = gs.Variable(f"{cut.name}.sum", cut.dtype, cut.shape)
            self._add("ReduceSum", f"{cut.name}.sum", [by_step, axis0], [total], attrs={"keepdims": 0})
            self._finish_read_out(cut, self.T, total)
            return
        sums = gs.Variable(f"{cut.name}.cumsum", cut.dtype, [self.T, *cut.shape])
        self._add(
            "CumSum", f"{cut.name}.cumsum", [by_step, self._const(f"{cut.name}.cumsum_axis", 0)], [sums]
        )
        parts = [
            gs.Variable(step_name(f"{cut.name}.prefix", t), cut.dtype, [1, *cut.shape])
            for t in range(1, self.T + 1)
        ]
        self._add("Split", f"{cut.name}.prefix", [sums], parts, attrs={"axis": 0, "num_outputs": self.T})
        for t, part in enumerate(parts, start=1):
            total = gs.Variable(step_name(f"{cut.name}.sum", t), cut.dtype, cut.shape)
            self._add("Squeeze", step_name(f"{cut.name}.sum", t), [part, axis0], [total])
            self._finish_read_out(cut, t, total)
