"""Per neuron layer, over the data: spikes, first-spike latency, residual potentials and the
correlation with the ANN's activation — kept as running sums inside the graph (:mod:`.accumulate`),
reduced here batch by batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from icsnn_onnx.analysis.accumulate import Emit, Family
from icsnn_onnx.contract import base_name, encoded_spikes_name, loop_step_name, step_name
from icsnn_onnx.runtime.instrument import NeuronLayer

MAX_LATENCY_BINS = 64


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
    mean_level: float | None = None  # units of θ per spike (1 for binary spikes; portable neurons)


def final_membrane(layer: NeuronLayer) -> str:
    return layer.loop.final_membrane if layer.loop is not None else layer.membranes[-1]


def layer_family(layer: NeuronLayer) -> Family:
    """States per neuron: spike count (a graded spike is one), steps before the first spike,
    output sum and the sum of its magnitude (a graded spike's level, in units of θ)."""

    def update(emit: Emit, previous: tuple[str, ...] | None, tensors: Sequence[str]) -> tuple[str, ...]:
        (out,) = tensors
        count_before, quiet_before, total_before, size_before = previous or (None, None, None, None)
        spike = emit.nonzero(out, f"{layer.name}.spike")
        count = emit.add(count_before, spike, f"{layer.name}.spike_count")
        quiet = emit.add(
            quiet_before, emit.is_zero(count, f"{layer.name}.silent"), f"{layer.name}.steps_silent"
        )
        as_float = emit.op("Cast", [out], f"{layer.name}.out_float", to=onnx.TensorProto.FLOAT)
        total = emit.add(total_before, as_float, f"{layer.name}.output_sum")
        size = emit.add(
            size_before, emit.op("Abs", [as_float], f"{layer.name}.out_abs"), f"{layer.name}.abs_sum"
        )
        return count, quiet, total, size

    steps = tuple((name,) for name in layer.outputs)
    body = (layer.loop.output,) if layer.loop is not None else None
    return Family(f"{layer.name}.activity", update, steps, body)


def encoded_sources(model: onnx.ModelProto, layers: list[NeuronLayer]) -> dict[str, str]:
    """Poisson-encoded inputs: their spikes at step 1 (rate encoders are neuron layers already)."""
    produced = {o for n in model.graph.node for o in n.output}
    neuron_outputs = {layer.outputs[0] for layer in layers}
    found = {}
    for graph_input in model.graph.input:
        spikes = step_name(encoded_spikes_name(graph_input.name), 1)
        if spikes in produced and spikes not in neuron_outputs:
            found[f"{graph_input.name} (encoded spikes)"] = spikes
    return found


def count_family(source: str, tensor: str, model: onnx.ModelProto) -> Family:
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


class Activity:
    """Running sums of every layer's activity over the batches, and the spikes per element of
    every spike source (neuron layers, encoded inputs, gates), for the synaptic operations."""

    def __init__(self, layers: list[NeuronLayer], T: int) -> None:
        self.layers, self.T = layers, T
        self.values: dict[str, float] = {}
        self.bins = min(T, MAX_LATENCY_BINS)
        self.histograms = {layer.name: np.zeros(self.bins, np.int64) for layer in layers}
        self.neurons: dict[str, int] = {}
        self.spikes: dict[str, np.ndarray] = {}  # per source, spikes per element summed over samples

    def _add(self, key: str, value: float) -> None:
        self.values[key] = self.values.get(key, 0.0) + float(value)

    def _spikes(self, source: str, count: np.ndarray) -> None:
        total = count.sum(axis=0, dtype=np.float64)
        self.spikes[source] = self.spikes[source] + total if source in self.spikes else total

    def add(self, got: dict, ref: dict | None, finals: dict, membranes: dict) -> None:
        """One batch: the instrumented SNN's outputs ``got`` and the ANN's ``ref`` (or None)."""
        T = self.T
        for layer in self.layers:
            count, quiet, total, size = (got[name] for name in finals[f"{layer.name}.activity"])
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
                self._add(f"{name}.units", np.sum(size / theta))
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

    def layer(self, layer: NeuronLayer) -> LayerActivity:
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
            mean_level=v[f"{name}.units"] / spikes if spikes and f"{name}.units" in v else None,
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
