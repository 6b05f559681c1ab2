"""Unroll the single-step SNN over T time steps, in one of three layouts.

One module per concern: ``builder`` (node helpers), ``stateful`` (neuron and gate steps, both
targets), ``encoders`` (rate/Poisson inputs), ``readout`` (read-out, per-step outputs), and one per
layout (``step_major``, ``time_batched``, ``loop``); this module is the pass. Common to all:

- Encoder: under direct coding the analog input is the input current at every step, so every
  time-invariant node (the input layer up to the first neurons) is computed once — hoisted out
  of the time loop — and shared by all steps. Under rate/Poisson coding each encoded input gets
  T steps of spikes (:mod:`.encoding`) and is a stream from the start.
- Neurons: each site becomes T steps ``IFNeuron(v(t-1), z(t), θ) -> (out(t), v(t))`` with v(0)
  the site's initial potential; only these recurrences are inherently sequential. For the ``cpu``
  target, a float32 site of rank 4 with per-channel (or per-layer) θ and v(0) and a channel count
  that fills ONNX Runtime's blocked layout steps as ``IFNeuronChannelwise`` instead (the same
  neuron in Conv/Relu form, :mod:`icsnn_onnx.neurons.if_neuron`), its v(0) materialized in z's layout by a
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
- ``loop``: step 1 unrolled, steps 2…T in one ONNX ``Loop`` (:mod:`.loop`); ``auto`` takes it
  where an unrolled graph would be too large to load (:mod:`..scale`).
"""

from __future__ import annotations

import json
import logging

import onnx_graphsurgeon as gs

from icsnn_onnx.contract import CHANNELWISE_SITES_KEY, LAYOUT_KEY, PER_STEP_OF_KEY, PER_STEP_OUTPUTS_KEY
from icsnn_onnx.errors import ConversionError
from icsnn_onnx.neurons import IF
from icsnn_onnx.options import ConversionOptions, Layout, Target
from icsnn_onnx.passes import Pass, PassResult, ensure, require
from icsnn_onnx.passes.graph_utils import rename_duplicates, static_dims
from icsnn_onnx.passes.insert_neurons import is_neuron
from icsnn_onnx.passes.layout import batch_fold_blocker
from icsnn_onnx.passes.program import Program
from icsnn_onnx.passes.scale import AUTO_LOOP_OPS, ops_per_step
from icsnn_onnx.passes.temporal import TemporalPlan, analyze
from icsnn_onnx.passes.unroll.emitter import Emitter
from icsnn_onnx.passes.unroll.step_major import StepMajor
from icsnn_onnx.passes.unroll.time_batched import TimeBatched

logger = logging.getLogger(__name__)


class Unroll(Pass):
    """Every IF neuron (and MaxPool gate) over ``program.options.T`` steps, in its layout."""

    def requires(self, program: Program) -> None:
        require(any(is_neuron(n) for n in program.graph.nodes), self.name, "no neuron site to unroll")

    def ensures(self, program: Program) -> None:
        left = [n.name for n in program.graph.nodes if is_neuron(n)]
        ensure(not left, self.name, f"sites not unrolled: {left}")

    def call(self, program: Program) -> PassResult:
        graph = program.graph
        gates = program.gates
        plan, blocked = analyze(
            graph,
            lambda n: is_neuron(n) or n.name in gates,
            stream_inputs=frozenset(program.encoders),
            units=program.unit_nodes,
        )
        require(not blocked, self.name, f"unsupported nodes reached unroll: {blocked}")
        options = program.options
        layout = _choose_layout(graph, plan, options)
        readout = {}
        if options.compensation:
            # a site's activation applied to its membrane's mean, or nothing where the neuron
            # computes f itself (the sigma-delta kinds: their integrated membrane is t·f(x̄))
            readout = {
                s.output: s.transfer if s.neuron == IF.name else None
                for s in program.sites.values()
                if s.output in plan.cuts
            }
        cpu = options.target is Target.CPU
        units = {name: unit.nodes for name, unit in program.units.items()}
        emitter = _emitter_class(layout)(
            graph, plan, options.T, options.per_step, readout, program.encoders, gates, cpu, units
        )
        emitter.run()
        if cpu:
            program.metadata[CHANNELWISE_SITES_KEY] = str(len(emitter.channelwise_sites))
        if options.per_step:
            per_step = emitter.add_per_step_outputs()
            program.metadata[PER_STEP_OUTPUTS_KEY] = ",".join(per_step.values())
            program.metadata[PER_STEP_OF_KEY] = json.dumps(per_step)
        program.metadata[LAYOUT_KEY] = str(layout)
        rename_duplicates(graph)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(program, True)


def _choose_layout(graph: gs.Graph, plan: TemporalPlan, options: ConversionOptions) -> Layout:
    layout, T = options.layout, options.T
    if layout is Layout.STEP_MAJOR or (layout is Layout.LOOP and T == 1):
        return Layout.STEP_MAJOR
    if layout is Layout.LOOP:
        return Layout.LOOP
    if layout is Layout.AUTO:
        neurons = sum(1 for name in plan.neurons if is_neuron(_node_by_name(graph, name)))
        others = len(plan.body) - len(plan.neurons)
        if ops_per_step(plan, neurons, others, options.per_step) * T > AUTO_LOOP_OPS:
            return Layout.LOOP
    blockers = time_batch_blockers(graph, plan)
    if not blockers:
        return Layout.TIME_BATCHED
    if layout is Layout.TIME_BATCHED:
        raise ConversionError(f"time-batched layout not applicable: {'; '.join(blockers)}")
    logger.warning("using the step-major layout: %s", blockers[0])
    return Layout.STEP_MAJOR


def _node_by_name(graph: gs.Graph, name: str) -> gs.Node:
    return next(n for n in graph.nodes if n.name == name)


def _emitter_class(layout: Layout) -> type[Emitter]:
    if layout is Layout.LOOP:
        from icsnn_onnx.passes.unroll.loop import Loop

        return Loop
    return TimeBatched if layout is Layout.TIME_BATCHED else StepMajor


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
        if name in plan.units:  # its running means are taken on [T, N, …] views of its tensors
            for tensor in [*node.inputs, *node.outputs]:
                dynamic = tensor.shape is None or not static_dims(tensor.shape[1:])
                if tensor.name in plan.streams and dynamic:
                    blockers.append(
                        f"{name} ({node.op}): compensated, {tensor.name} has dynamic non-batch dimensions"
                    )
    tensors = graph.tensors()
    for cut in plan.cuts:
        shape = tensors[cut].shape
        if shape is None or not static_dims(shape[1:]):
            blockers.append(f"read-out {cut} has dynamic non-batch dimensions")
    return blockers
