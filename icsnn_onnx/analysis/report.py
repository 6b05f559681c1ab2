"""What an SNN does, measured on data: spikes per layer, latency, synaptic operations, energy.

Works on any SNN file icsnn-onnx wrote (every layout), with no reconversion: an instrumented
copy keeps, per neuron, its spike count, the steps before its first spike and its output sum —
running sums inside the graph (:mod:`.accumulate`), so memory is bounded by the batch whatever
the data size.

- Per neuron layer: firing rate (spikes per neuron per step), fractions never firing and firing
  at every step, first-spike latency (the step of the first spike: mean and histogram), the
  residual membrane v(T)/θ, and with ``ann`` the correlation of the ANN activation with the
  SNN's rate × θ.
- Synaptic operations per sample: Σ over spikes of their exact fan-out (:mod:`.fanout`), per
  destination layer, beside the ANN's multiply-accumulates. Layers computing on dense values
  (the input layer under direct coding, the output layer on the read-out) count MACs, as the ANN.
- Energy (:class:`EnergyModel`): SOPs at ``e_ac`` each plus dense layers' MACs at ``e_mac``,
  against the ANN's MACs at ``e_mac``; the neuron updates (T × neurons) are counted apart.
- Accuracy (or agreement with the ANN) after every t: from the file's per-step outputs, else
  from its head run on the read-out after each t (:mod:`.readout_by_step`).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from icsnn_onnx._version import __version__
from icsnn_onnx.analysis.accumulate import accumulate, expose_also
from icsnn_onnx.analysis.activity import (
    Activity,
    LayerActivity,
    count_family,
    encoded_sources,
    final_membrane,
    layer_family,
)
from icsnn_onnx.analysis.dense import CompensatedCost, clone_nodes, compensated_costs
from icsnn_onnx.analysis.dense import probe_names as unit_tensors
from icsnn_onnx.analysis.energy import EnergyModel, SynapticLayer, energy_record, synaptic_layers
from icsnn_onnx.analysis.fanout import probe_tensors, spike_paths, spike_routes
from icsnn_onnx.analysis.readout_by_step import StepReadout
from icsnn_onnx.analysis.synapses import Synapse, find_synapses, macs
from icsnn_onnx.contract import SnnMetadata
from icsnn_onnx.data import Data, batch_count, check_same_inputs, input_specs
from icsnn_onnx.model_io import load_model
from icsnn_onnx.neurons import levels_of
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.runtime.batching import iter_labelled
from icsnn_onnx.runtime.evaluate import predicted_labels
from icsnn_onnx.runtime.instrument import expose, neuron_layers
from icsnn_onnx.runtime.session import Session

__all__ = ["EnergyModel", "LayerActivity", "Report", "SynapticLayer", "report"]


@dataclass(frozen=True)
class Report:
    samples: int
    T: int
    layers: tuple[LayerActivity, ...]
    synapses: tuple[SynapticLayer, ...]
    accuracy: float | None  # at T (labelled data)
    ann_accuracy: float | None
    accuracy_by_t: list[float] | None  # after t = 1..T (files with per-step outputs)
    agreement_by_t: list[float] | None  # same predicted class as the ANN, after t = 1..T
    neuron_updates: float  # T × neurons, per sample
    energy: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    versions: dict = field(default_factory=dict)
    compensated: tuple[CompensatedCost, ...] = ()  # what is computed densely, every step
    neuron_ops: float = 0.0  # per sample: Σ T × neurons × their kind's operations per step
    spike_driven_macs: float | None = None  # the ANN's MACs done by layers that receive spikes, a share
    spiking: str = ""  # one line: what spikes, what stays dense ("mostly dense" where it is)

    def as_dict(self) -> dict:
        return asdict(self)


def report(
    snn: str | Path | onnx.ModelProto,
    data: Data,
    ann: str | Path | onnx.ModelProto | None = None,
    batch_size: int = 32,
    provider: str = "auto",
    energy: EnergyModel | None = None,
    progress: ProgressFactory = silent,
    fixed: Mapping[str, object] | None = None,
) -> Report:
    """Measure ``snn`` on ``data`` (see the module docstring)."""
    data = data.reusable()  # read by the probe, the SNN and the ANN
    energy = energy or EnergyModel()
    model = load_model(snn)
    layers = neuron_layers(model)
    T = max(layer.T for layer in layers)
    layers = [layer for layer in layers if layer.T == T]
    synapses = find_synapses(model)
    sources = {layer.name: layer.outputs[0] for layer in layers} | encoded_sources(model, layers)
    paths, forwarded = spike_paths(model, sources, synapses)
    sources |= forwarded
    families = [layer_family(layer) for layer in layers] + [
        count_family(name, tensor, model)
        for name, tensor in sources.items()
        if name not in {layer.name for layer in layers}
    ]
    instrumented, finals = accumulate(model, families)
    meta = SnnMetadata.read({p.key: p.value for p in model.metadata_props})
    outputs = [o.name for o in model.graph.output]
    per_step_of = meta.per_step if meta is not None else {}
    output = next(n for n in outputs if n not in per_step_of.values())
    per_step = per_step_of.get(output)
    by_step = StepReadout(model, layers, T) if per_step is None else None
    step_names = by_step.expose(instrumented) if by_step is not None else []
    membranes = {layer.name: final_membrane(layer) for layer in layers}
    constants = {t.name for t in model.graph.initializer}
    clones = clone_nodes(model, meta) if meta is not None else {}
    probe_names = [
        n
        for n in [*probe_tensors(paths), *(s.input for s in synapses), *unit_tensors(clones)]
        if n not in constants
    ]
    expose_also(instrumented, [*membranes.values(), *probe_names])
    session = Session(instrumented, provider=provider, fixed=fixed)
    head = Session(by_step.head, provider="cpu") if by_step is not None else None
    ann_session, ann_tensors = None, []
    if ann is not None:
        ann_model = load_model(ann)
        check_same_inputs(session.inputs, input_specs(ann_model), str(ann))
        known = {o for n in ann_model.graph.node for o in n.output}
        ann_tensors = [layer.tensor for layer in layers if layer.tensor in known]
        ann_session = Session(expose(ann_model, [output, *ann_tensors]), provider=provider, fixed=fixed)

    # A fixed input may be sized for a batch (a recurrent state [layers, N, H]): probe at that size.
    first = _first_batch(session, data, batch_size if fixed else 1)
    probe = session.run(first, list(dict.fromkeys(probe_names)))
    routes = spike_routes(model, sources, paths, probe)
    stats = _Stats(layers, synapses, routes, T, _macs(synapses, probe, model))
    if meta is not None:
        shapes = {n: np.shape(v) for n, v in probe.items()}
        stats.units = compensated_costs(model, meta, clones, shapes, len(next(iter(first.values()))))
        stats.meta = meta
    names = [output, *([per_step] if per_step else []), *(n for f in finals.values() for n in f)]
    names = list(dict.fromkeys([*names, *membranes.values(), *step_names]))
    ann_batches = ann_session.iter_run(data, batch_size, [output, *ann_tensors]) if ann_session else None
    bar = progress(batch_count(data, batch_size), "reporting")
    labelled = False
    try:
        for got, labels in iter_labelled(session, data, batch_size, names):
            ref = next(ann_batches) if ann_batches is not None else None
            steps = None
            if per_step is not None:
                steps = got[per_step]
            elif by_step is not None:
                steps = np.stack([r[output] for r in by_step.outputs_by_t(got, head)])
                steps[-1] = got[output]  # the SNN's own output at T, not a re-summed one
            stats.add(got, ref, finals, membranes, output, steps, labels)
            labelled = labels is not None
            bar.update(1)
    finally:
        bar.close()
    return stats.finish(energy, labelled, ann is not None)


def _first_batch(session: Session, data: Data, samples: int = 1) -> dict[str, np.ndarray]:
    """The probe run that reads tensor shapes: the first ``samples`` (one, repeated to a static
    batch size); layer costs are per sample (the shapes past axis 0), whatever the probe's size."""
    static = session.inputs[0].static_batch if session.inputs else None
    if static or samples == 1:
        first = next(data.batches(1))
        return {k: np.repeat(v[:1], static or 1, axis=0) for k, v in first.items()}
    return next(data.batches(samples))


def _macs(synapses: list[Synapse], probe: dict, model: onnx.ModelProto) -> dict[str, int]:
    constants = {t.name: t for t in model.graph.initializer}
    shapes = {n: np.shape(v) for n, v in probe.items()} | {n: tuple(t.dims) for n, t in constants.items()}
    return {s.name: macs(s, shapes[s.input]) for s in synapses}


class _Stats:
    """Running sums over the batches: the layers' activity and the outputs' accuracy."""

    def __init__(
        self, layers: list, synapses: list[Synapse], routes: list, T: int, macs: dict[str, int]
    ) -> None:
        self.layers, self.synapses, self.routes, self.T, self.macs = layers, synapses, routes, T, macs
        self.activity = Activity(layers, T)
        self.units: list[CompensatedCost] = []
        self.meta: SnnMetadata | None = None
        self.seen = 0
        self.correct = self.ann_correct = 0.0
        self.correct_by_t: np.ndarray | None = None
        self.agree_by_t: np.ndarray | None = None

    def add(
        self,
        got: dict,
        ref: dict | None,
        finals: dict,
        membranes: dict,
        output: str,
        steps: np.ndarray | None,
        labels: object,
    ) -> None:
        self.activity.add(got, ref, finals, membranes)
        self._outputs(got, ref, output, steps, labels)

    def _outputs(
        self, got: dict, ref: dict | None, output: str, steps: np.ndarray | None, labels: object
    ) -> None:
        n = len(got[output])
        self.seen += n
        predictions = predicted_labels(got[output])
        y = None if labels is None else np.asarray(labels)
        ann_predictions = predicted_labels(ref[output]) if ref is not None else None
        if y is not None:
            self.correct += float(np.sum(predictions == y))
            if ann_predictions is not None:
                self.ann_correct += float(np.sum(ann_predictions == y))
        if steps is not None:  # [T, N, …]
            by_t = np.stack([predicted_labels(s) for s in steps])
            if y is not None:
                hits = (by_t == y[None, :]).sum(axis=1).astype(np.float64)
                self.correct_by_t = hits if self.correct_by_t is None else self.correct_by_t + hits
            if ann_predictions is not None:
                same = (by_t == ann_predictions[None, :]).sum(axis=1).astype(np.float64)
                self.agree_by_t = same if self.agree_by_t is None else self.agree_by_t + same

    def finish(self, energy: EnergyModel, labelled: bool, with_ann: bool) -> Report:
        T, samples = self.T, self.seen
        graded = frozenset(layer.name for layer in self.layers if levels_of(layer.op_type))
        synaptic, notes = synaptic_layers(
            self.synapses, self.routes, self.activity.spikes, self.macs, samples, T, graded
        )
        updates = T * sum(self.activity.neurons.values())
        neuron_ops = T * sum(
            self.activity.neurons.get(layer.name, 0) * layer.kind.ops_per_step for layer in self.layers
        )
        dense = sum(u.per_sample for u in self.units)
        ann_macs = sum(s.ann_macs for s in synaptic) + sum(u.macs_per_step for u in self.units)
        driven = sum(s.ann_macs for s in synaptic if s.per_step) / ann_macs if ann_macs else None
        spiking = _spiking_line(self.meta, driven)
        if driven is not None and driven < 0.5:
            notes.append(
                f"mostly dense: {100 * (1 - driven):.0f}% of the ANN's multiply-accumulates run on dense values"
            )
        return Report(
            samples=samples,
            T=T,
            layers=tuple(self.activity.layer(layer) for layer in self.layers),
            synapses=tuple(synaptic),
            accuracy=self.correct / samples if labelled else None,
            ann_accuracy=self.ann_correct / samples if labelled and with_ann else None,
            accuracy_by_t=(self.correct_by_t / samples).tolist() if self.correct_by_t is not None else None,
            agreement_by_t=(self.agree_by_t / samples).tolist() if self.agree_by_t is not None else None,
            neuron_updates=float(updates),
            energy=energy_record(synaptic, energy, updates, dense, sum(u.macs_per_step for u in self.units)),
            notes=tuple(notes),
            versions=_versions(),
            compensated=tuple(self.units),
            neuron_ops=float(neuron_ops),
            spike_driven_macs=driven,
            spiking=spiking,
        )


def _spiking_line(meta: SnnMetadata | None, driven: float | None) -> str:
    """What spikes and what does not, in a line."""
    if meta is None:
        return ""
    line = meta.spiking_summary()
    if driven is not None:
        line += f"; {100 * driven:.0f}% of the ANN's multiply-accumulates are driven by spikes"
    return line


def _versions() -> dict:
    import onnxruntime

    return {
        "icsnn_onnx": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
