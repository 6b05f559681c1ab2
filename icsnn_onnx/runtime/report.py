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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from icsnn_onnx._version import __version__
from icsnn_onnx.contract import SnnMetadata, base_name, encoded_spikes_name, loop_step_name, step_name
from icsnn_onnx.data import check_same_inputs, input_specs
from icsnn_onnx.model_io import load_model
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.runtime.accumulate import Emit, Family, accumulate, expose_also
from icsnn_onnx.runtime.batching import iter_labelled
from icsnn_onnx.runtime.evaluate import predicted_labels
from icsnn_onnx.runtime.fanout import (
    MEMBRANE,
    OTHER,
    SYNAPSE,
    Route,
    probe_tensors,
    spike_paths,
    spike_routes,
)
from icsnn_onnx.runtime.instrument import NeuronLayer, expose, neuron_layers
from icsnn_onnx.runtime.readout_by_step import StepReadout
from icsnn_onnx.runtime.session import Session
from icsnn_onnx.runtime.synapses import Synapse, find_synapses, macs
from icsnn_onnx.streams import Data, batch_count

MAX_LATENCY_BINS = 64

ENERGY_CONVENTION = (
    "SNN: synaptic operations (each spike × the weights it reaches: its exact fan-out through "
    "pooling, Add and Concat) at e_ac each, plus the multiply-accumulates of the layers that "
    "compute on dense values (the input layer under direct coding, the output layer on the "
    "read-out) at e_mac; ANN: the same layers' multiply-accumulates at e_mac. Padding's zeros are "
    "not counted; elementwise adds of the ANN and the read-out's sums are not counted. Neuron "
    "updates (T × neurons) are reported apart, not included."
)


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation. Default: 45 nm CMOS, 32-bit float (Horowitz, ISSCC 2014): an
    accumulate 0.9 pJ, a multiply-accumulate 4.6 pJ."""

    e_ac: float = 0.9e-12  # J per synaptic operation (accumulate)
    e_mac: float = 4.6e-12  # J per multiply-accumulate
    source: str = "Horowitz, ISSCC 2014, 45 nm, 32-bit float: add 0.9 pJ, multiply-add 4.6 pJ"

    def __post_init__(self) -> None:
        if not (self.e_ac >= 0 and self.e_mac >= 0):
            raise ValueError("energies per operation must be >= 0")


@dataclass(frozen=True)
class LayerActivity:
    name: str
    neurons: int  # per sample
    firing_rate: float  # spikes per neuron per step
    never_fired: float
    always_fired: float  # fired at every step
    first_spike_mean: float | None  # mean step of the first spike (neurons that fired)
    first_spike_histogram: list[int]  # neurons by first-spike step: min(T, 64) equal bins of 1..T
    residual_mean: float | None  # mean v(T)/θ (portable neurons)
    correlation: float | None  # ANN activation vs rate·θ (with an ANN)


@dataclass(frozen=True)
class SynapticLayer:
    name: str
    op_type: str  # Conv, Gemm, MatMul; "identity" for spikes into a membrane; "other"
    kind: str  # "SOP": receives spikes; "MAC": computes on dense values
    sops: float  # synaptic operations per sample
    snn_macs: float  # multiply-accumulates per sample in the SNN
    ann_macs: float  # multiply-accumulates per sample in the ANN

    @property
    def per_step(self) -> bool:
        return self.kind == "SOP"


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
) -> Report:
    """Measure ``snn`` on ``data`` (see the module docstring)."""
    data = data.reusable()  # read by the probe, the SNN and the ANN
    energy = energy or EnergyModel()
    model = load_model(snn)
    layers = neuron_layers(model)
    T = max(layer.T for layer in layers)
    layers = [layer for layer in layers if layer.T == T]
    synapses = find_synapses(model)
    sources = {layer.name: layer.outputs[0] for layer in layers} | _encoded_sources(model, layers)
    paths, forwarded = spike_paths(model, sources, synapses)
    sources |= forwarded
    families = [_layer_family(layer) for layer in layers] + [
        _count_family(name, tensor, model)
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
    membranes = {layer.name: _final_membrane(layer) for layer in layers}
    constants = {t.name for t in model.graph.initializer}
    probe_names = [n for n in [*probe_tensors(paths), *(s.input for s in synapses)] if n not in constants]
    expose_also(instrumented, [*membranes.values(), *probe_names])
    session = Session(instrumented, provider=provider)
    head = Session(by_step.head, provider="cpu") if by_step is not None else None
    ann_session, ann_tensors = None, []
    if ann is not None:
        ann_model = load_model(ann)
        check_same_inputs(session.inputs, input_specs(ann_model), str(ann))
        known = {o for n in ann_model.graph.node for o in n.output}
        ann_tensors = [layer.tensor for layer in layers if layer.tensor in known]
        ann_session = Session(expose(ann_model, [output, *ann_tensors]), provider=provider)

    probe = session.run(_first_batch(session, data), list(dict.fromkeys(probe_names)))
    routes = spike_routes(model, sources, paths, probe)
    stats = _Stats(layers, synapses, routes, T, _macs(synapses, probe, model))
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
    return stats.finish(int(stats.values.get("seen", 0)), energy, labelled, ann is not None)


def _first_batch(session: Session, data: Data) -> dict[str, np.ndarray]:
    """One sample (repeated to a static batch size): the probe run that reads tensor shapes."""
    size = (session.inputs[0].static_batch if session.inputs else None) or 1
    first = next(data.batches(1))
    return {k: np.repeat(v[:1], size, axis=0) for k, v in first.items()}


def _macs(synapses: list[Synapse], probe: dict, model: onnx.ModelProto) -> dict[str, int]:
    constants = {t.name: t for t in model.graph.initializer}
    shapes = {n: np.shape(v) for n, v in probe.items()} | {n: tuple(t.dims) for n, t in constants.items()}
    return {s.name: macs(s, shapes[s.input]) for s in synapses}


def _final_membrane(layer: NeuronLayer) -> str:
    return layer.loop.final_membrane if layer.loop is not None else layer.membranes[-1]


def _layer_family(layer: NeuronLayer) -> Family:
    """States per neuron: spike count, steps before the first spike, output sum."""

    def update(emit: Emit, previous: tuple[str, ...] | None, tensors: Sequence[str]) -> tuple[str, ...]:
        (out,) = tensors
        count_before, quiet_before, total_before = previous or (None, None, None)
        spike = emit.nonzero(out, f"{layer.name}.spike")
        count = emit.add(count_before, spike, f"{layer.name}.spike_count")
        quiet = emit.add(
            quiet_before, emit.is_zero(count, f"{layer.name}.silent"), f"{layer.name}.steps_silent"
        )
        as_float = emit.op("Cast", [out], f"{layer.name}.out_float", to=onnx.TensorProto.FLOAT)
        total = emit.add(total_before, as_float, f"{layer.name}.output_sum")
        return count, quiet, total

    steps = tuple((name,) for name in layer.outputs)
    body = (layer.loop.output,) if layer.loop is not None else None
    return Family(f"{layer.name}.activity", update, steps, body)


def _encoded_sources(model: onnx.ModelProto, layers: list[NeuronLayer]) -> dict[str, str]:
    """Poisson-encoded inputs: their spikes at step 1 (rate encoders are neuron layers already)."""
    produced = {o for n in model.graph.node for o in n.output}
    neuron_outputs = {layer.outputs[0] for layer in layers}
    found = {}
    for graph_input in model.graph.input:
        spikes = step_name(encoded_spikes_name(graph_input.name), 1)
        if spikes in produced and spikes not in neuron_outputs:
            found[f"{graph_input.name} (encoded spikes)"] = spikes
    return found


def _count_family(source: str, tensor: str, model: onnx.ModelProto) -> Family:
    """Per element of a spike tensor that is no neuron's output (a Poisson-encoded input, a
    gate's forwarded spikes; ``tensor`` at step 1): the steps it spiked in."""

    def update(emit: Emit, previous: tuple[str, ...] | None, tensors: Sequence[str]) -> tuple[str, ...]:
        (x,) = tensors
        before = previous[0] if previous else None
        return (emit.add(before, emit.nonzero(x, f"{source}.spike"), f"{source}.spike_count"),)

    produced = {o for n in model.graph.node for o in n.output}
    base, steps, t = base_name(tensor), [], 1
    while step_name(base, t) in produced:
        steps.append((step_name(base, t),))
        t += 1
    looped = any(n.op_type == "Loop" for n in model.graph.node)
    return Family(f"{source}.count", update, tuple(steps), (loop_step_name(base),) if looped else None)


class _Stats:
    """Running sums over the batches."""

    def __init__(
        self, layers: list[NeuronLayer], synapses: list[Synapse], routes: list[Route], T: int, macs: dict
    ) -> None:
        self.layers, self.synapses, self.routes, self.T, self.macs = layers, synapses, routes, T, macs
        self.values: dict[str, float] = {}
        self.bins = min(T, MAX_LATENCY_BINS)
        self.histograms = {layer.name: np.zeros(self.bins, np.int64) for layer in layers}
        self.neurons: dict[str, int] = {}
        self.spikes: dict[str, np.ndarray] = {}  # per source, spikes per element summed over samples
        self.correct = self.ann_correct = 0.0
        self.correct_by_t: np.ndarray | None = None
        self.agree_by_t: np.ndarray | None = None

    def _add(self, key: str, value: float) -> None:
        self.values[key] = self.values.get(key, 0.0) + float(value)

    def _spikes(self, source: str, count: np.ndarray) -> None:
        total = count.sum(axis=0, dtype=np.float64)
        self.spikes[source] = self.spikes[source] + total if source in self.spikes else total

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
        T = self.T
        for layer in self.layers:
            count, quiet, total = (got[name] for name in finals[f"{layer.name}.activity"])
            name = layer.name
            self._spikes(name, count)
            self.neurons[name] = count[0].size
            self._add(f"{name}.elements", count.size)
            self._add(f"{name}.never", np.count_nonzero(count == 0))
            self._add(f"{name}.always", np.count_nonzero(count >= T))
            first = quiet[count > 0] + 1  # the step of the first spike
            self._add(f"{name}.first_sum", first.sum())
            self._add(f"{name}.fired", first.size)
            self.histograms[name] += np.histogram(first, bins=np.linspace(1, T + 1, self.bins + 1))[0]
            if layer.threshold is not None:
                theta = np.broadcast_to(layer.threshold.astype(np.float64), count.shape[1:])
                self._add(f"{name}.residual", np.sum(got[membranes[name]] / theta))
            if ref is not None and layer.tensor in ref:
                a = ref[layer.tensor].astype(np.float64).ravel()
                r = (total / T).astype(np.float64).ravel()
                for key, value in (
                    ("n", a.size),
                    ("a", a.sum()),
                    ("r", r.sum()),
                    ("aa", a @ a),
                    ("rr", r @ r),
                    ("ar", a @ r),
                ):
                    self._add(f"{name}.corr.{key}", value)
        for family, names in finals.items():
            if family.endswith(".count"):
                self._spikes(family.removesuffix(".count"), got[names[0]])
        self._outputs(got, ref, output, steps, labels)

    def _outputs(
        self, got: dict, ref: dict | None, output: str, steps: np.ndarray | None, labels: object
    ) -> None:
        n = len(got[output])
        self._add("seen", n)
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

    def _layer(self, layer: NeuronLayer) -> LayerActivity:
        v, name = self.values, layer.name
        elements = max(v.get(f"{name}.elements", 0.0), 1.0)
        fired = v.get(f"{name}.fired", 0.0)
        spikes = float(self.spikes[name].sum()) if name in self.spikes else 0.0
        return LayerActivity(
            name=name,
            neurons=self.neurons.get(name, 0),
            firing_rate=spikes / (elements * self.T),
            never_fired=v.get(f"{name}.never", 0.0) / elements,
            always_fired=v.get(f"{name}.always", 0.0) / elements,
            first_spike_mean=v[f"{name}.first_sum"] / fired if fired else None,
            first_spike_histogram=self.histograms[name].tolist(),
            residual_mean=v[f"{name}.residual"] / elements if f"{name}.residual" in v else None,
            correlation=_correlation(v, name),
        )

    def _synaptic(self, samples: int) -> tuple[list[SynapticLayer], list[str]]:
        sops: dict[tuple[str, str], float] = {}
        for route in self.routes:
            spikes = self.spikes.get(route.source)
            if spikes is not None:
                key = (route.kind, route.target)
                sops[key] = sops.get(key, 0.0) + float(np.sum(spikes * route.fanout)) / samples
        rows, notes = [], []
        for s in self.synapses:
            reached = (SYNAPSE, s.name) in {(r.kind, r.target) for r in self.routes}
            if reached:
                rows.append(
                    SynapticLayer(
                        s.name, s.op_type, "SOP", sops.get((SYNAPSE, s.name), 0.0), 0.0, self.macs[s.name]
                    )
                )
            elif s.stepped:  # runs every step on values no spike analysis covers: dense
                rows.append(
                    SynapticLayer(
                        s.name, s.op_type, "MAC", 0.0, self.T * self.macs[s.name], self.macs[s.name]
                    )
                )
                notes.append(
                    f"{s.name} runs at every step on inputs that are not spikes: counted as T × its MACs"
                )
            else:
                rows.append(
                    SynapticLayer(s.name, s.op_type, "MAC", 0.0, self.macs[s.name], self.macs[s.name])
                )
        for (kind, target), value in sops.items():
            if kind == MEMBRANE:
                rows.append(SynapticLayer(f"→ {target}", "identity", "SOP", value, 0.0, 0.0))
            elif kind == OTHER:
                rows.append(SynapticLayer(target, "other", "SOP", value, 0.0, 0.0))
                notes.append(
                    f"spikes reach {target}, which the fan-out analysis does not see through: one operation per spike"
                )
        return rows, notes

    def finish(self, samples: int, energy: EnergyModel, labelled: bool, with_ann: bool) -> Report:
        T = self.T
        synaptic, notes = self._synaptic(samples)
        sops = sum(s.sops for s in synaptic)
        snn_macs = sum(s.snn_macs for s in synaptic)
        ann_macs = sum(s.ann_macs for s in synaptic)
        updates = T * sum(self.neurons.values())
        energy_record = {
            "convention": ENERGY_CONVENTION,
            "source": energy.source,
            "e_ac_joules": energy.e_ac,
            "e_mac_joules": energy.e_mac,
            "sops_per_sample": sops,
            "snn_macs_per_sample": snn_macs,
            "ann_macs_per_sample": ann_macs,
            "snn_joules_per_sample": sops * energy.e_ac + snn_macs * energy.e_mac,
            "ann_joules_per_sample": ann_macs * energy.e_mac,
            "neuron_updates_per_sample": updates,
        }
        return Report(
            samples=samples,
            T=T,
            layers=tuple(self._layer(layer) for layer in self.layers),
            synapses=tuple(synaptic),
            accuracy=self.correct / samples if labelled else None,
            ann_accuracy=self.ann_correct / samples if labelled and with_ann else None,
            accuracy_by_t=(self.correct_by_t / samples).tolist() if self.correct_by_t is not None else None,
            agreement_by_t=(self.agree_by_t / samples).tolist() if self.agree_by_t is not None else None,
            neuron_updates=float(updates),
            energy=energy_record,
            notes=tuple(notes),
            versions=_versions(),
        )


def _correlation(v: dict, name: str) -> float | None:
    key = f"{name}.corr."
    if f"{key}n" not in v:
        return None
    n = v[f"{key}n"]
    cov = v[f"{key}ar"] - v[f"{key}a"] * v[f"{key}r"] / n
    var_a = v[f"{key}aa"] - v[f"{key}a"] ** 2 / n
    var_r = v[f"{key}rr"] - v[f"{key}r"] ** 2 / n
    if var_a <= 0 or var_r <= 0:
        return None
    return float(cov / np.sqrt(var_a * var_r))


def _versions() -> dict:
    import onnxruntime

    return {
        "icsnn_onnx": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
