"""Where an SNN departs from its ANN, layer by layer and step by step (``icsnn-onnx diagnose``).

For every neuron layer and each traced step count t, over the data (streamed in batches):

- *output error* ``‖r − a‖/‖a‖``: ``r = Σ_{k≤t} out(k)/t`` (rate × θ) against the ANN's
  activation ``a``;
- *input error* ``‖z̄ − z‖/‖z‖``: the mean input current ``z̄`` against the ANN's pre-activation
  ``z`` — the error that arrives from the layers upstream;
- *local error* ``‖r − clip(z̄, 0, θ)‖/‖clip(z̄, 0, θ)‖``: what this layer's neurons add to the
  current they receive (the rate code's t levels, spikes that arrive unevenly, …);
- *saturated*: the fraction of neurons that fired at every step (``r = θ``: clipped);
- *overfired*: the fraction that fired and end with ``v(t) < 0`` — more spikes than their
  integrated input justifies (input that turned negative after they fired), which no initial
  potential can undo (docs/method.md §10);
- *above θ*: the fraction of the ANN's activations above θ (lost to clipping at any T).

Prefix means of one SNN: where θ or v(0) were fitted to the compiled T, a model compiled for a
smaller t would differ. The model's outputs are compared at T (and at each traced t when the file
has per-step outputs): relative error and agreement of the predicted class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from icsnn_onnx.data import Data, batch_count
from icsnn_onnx.errors import DataError
from icsnn_onnx.model_io import load_model
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.runtime.instrument import NeuronLayer, expose, instrument, neuron_layers
from icsnn_onnx.runtime.session import Session


@dataclass(frozen=True)
class LayerStats:
    output_error: float | None  # None where the ANN has no such tensor (e.g. a MaxPool's tree)
    input_error: float | None
    local_error: float | None  # None for neurons whose θ is not an input (--target cpu)
    saturated: float | None
    overfired: float


@dataclass(frozen=True)
class LayerTrace:
    name: str
    tensor: str  # the activation it replaces
    above_threshold: float | None
    by_step: dict[int, LayerStats]


@dataclass(frozen=True)
class Diagnosis:
    samples: int
    T: int
    steps: tuple[int, ...]
    layers: tuple[LayerTrace, ...]
    output: str
    output_error: dict[int, float] = field(default_factory=dict)
    agreement: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def default_steps(T: int) -> tuple[int, ...]:
    """1, 2, 4, … up to T, and T."""
    return tuple(sorted({*(2**k for k in range(T.bit_length()) if 2**k <= T), T}))


class _Sums:
    """Squared-error and count accumulators of one layer at one step."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def add(self, key: str, value: float) -> None:
        self.values[key] = self.values.get(key, 0.0) + value

    def ratio(self, num: str, den: str) -> float | None:
        if num not in self.values or self.values.get(den, 0.0) <= 0:
            return None
        return float(np.sqrt(self.values[num] / self.values[den]))

    def fraction(self, key: str) -> float | None:
        if key not in self.values:
            return None
        return self.values[key] / max(self.values["count"], 1.0)


def diagnose(
    snn: str | Path | onnx.ModelProto,
    ann: str | Path | onnx.ModelProto,
    data: Data,
    steps: Sequence[int] | None = None,
    batch_size: int = 16,
    provider: str = "auto",
    progress: ProgressFactory = silent,
    fixed: Mapping[str, object] | None = None,
) -> Diagnosis:
    """Trace every neuron layer of ``snn`` against ``ann`` on ``data`` (see the module docstring)."""
    snn_model, ann_model = load_model(snn), load_model(ann)
    data = data.reusable()  # read by the SNN and the ANN side by side
    layers = neuron_layers(snn_model)
    T = max(layer.T for layer in layers)
    looped = any(layer.loop is not None for layer in layers)
    steps = tuple(sorted(set(steps))) if steps else ((1, T) if looped else default_steps(T))
    if looped and not set(steps) <= {1, T}:
        raise DataError(f"an SNN with --layout loop is traced after step 1 and after T={T} only")
    if steps[0] < 1 or steps[-1] > T:
        raise DataError(f"steps must lie in 1..{T}, got {list(steps)}")
    traced = [layer for layer in layers if layer.T == T]  # rate encoders of other lengths aside
    instrumented, probes = instrument(snn_model, traced, steps)
    snn_session = Session(instrumented, provider=provider, fixed=fixed)
    ann_tensors = {o for n in ann_model.graph.node for o in n.output} | {
        i.name for i in ann_model.graph.input
    }
    stepwise = snn_session.snn.per_step if snn_session.snn is not None else {}
    output = next(o.name for o in snn_model.graph.output if o.name not in stepwise.values())
    per_step = stepwise.get(output)
    layer_tensors = {t for layer in traced for t in (layer.tensor, layer.current) if t in ann_tensors}
    wanted = [output, *sorted(layer_tensors - {output})]
    ann_session = Session(expose(ann_model, wanted), provider=provider, fixed=fixed)
    if [s.name for s in ann_session.inputs] != [s.name for s in snn_session.inputs]:
        raise DataError("the ANN's inputs are not the SNN's: give the ANN this SNN was converted from")
    snn_names = [output, *([per_step] if per_step else [])]
    snn_names += list(
        dict.fromkeys(n for p in probes.values() for n in (p.output_sum, p.current_sum, p.membrane))
    )

    sums = {(layer.name, t): _Sums() for layer in traced for t in steps}
    above: dict[str, list[float]] = {layer.name: [0.0, 0.0] for layer in traced}
    outputs = {t: _Sums() for t in steps}
    bar = progress(batch_count(data, batch_size), "diagnosing")
    samples = 0
    try:
        for got, ref in zip(
            snn_session.iter_run(data, batch_size, snn_names),
            ann_session.iter_run(data, batch_size, wanted),
            strict=True,
        ):
            for layer in traced:
                _accumulate(layer, steps, probes, got, ref, sums, above[layer.name])
            _compare_outputs(got[output], ref[output], outputs[T])
            samples += len(ref[output])
            if per_step:
                for t in steps[:-1] if steps[-1] == T else steps:
                    _compare_outputs(got[per_step][t - 1], ref[output], outputs[t])
            bar.update(1)
    finally:
        bar.close()

    traces = []
    for layer in traced:
        by_step = {}
        for t in steps:
            s = sums[(layer.name, t)]
            by_step[t] = LayerStats(
                output_error=s.ratio("d_out", "a"),
                input_error=s.ratio("d_in", "z"),
                local_error=s.ratio("d_local", "ideal"),
                saturated=s.fraction("saturated"),
                overfired=s.fraction("overfired") or 0.0,
            )
        count, hits = above[layer.name]
        fraction = hits / count if layer.threshold is not None and count else None
        traces.append(LayerTrace(layer.name, layer.tensor, fraction, by_step))
    return Diagnosis(
        samples=samples,
        T=T,
        steps=steps,
        layers=tuple(traces),
        output=output,
        output_error={t: e for t in steps if (e := outputs[t].ratio("d_out", "a")) is not None},
        agreement={t: a for t in steps if (a := outputs[t].fraction("agree")) is not None},
    )


def _accumulate(
    layer: NeuronLayer,
    steps: Sequence[int],
    probes: dict,
    got: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    sums: dict,
    above: list[float],
) -> None:
    a = ref.get(layer.tensor)
    z = ref.get(layer.current)
    theta = layer.threshold
    if a is not None and theta is not None:
        above[0] += a.size
        above[1] += float(np.count_nonzero(a > np.broadcast_to(theta, a.shape) * (1 + 1e-6)))
    for t in steps:
        probe, s = probes[(layer.name, t)], sums[(layer.name, t)]
        rate = got[probe.output_sum].astype(np.float64) / t
        current = np.broadcast_to(got[probe.current_sum].astype(np.float64) / t, rate.shape)
        s.add("count", rate.size)
        fired = got[probe.output_sum] > 0
        s.add("overfired", float(np.count_nonzero(fired & (got[probe.membrane] < 0))))
        if a is not None:
            s.add("d_out", float(np.sum((rate - a) ** 2)))
            s.add("a", float(np.sum(a.astype(np.float64) ** 2)))
        if z is not None:
            s.add("d_in", float(np.sum((current - z) ** 2)))
            s.add("z", float(np.sum(z.astype(np.float64) ** 2)))
        if theta is not None:
            bound = np.broadcast_to(theta.astype(np.float64), rate.shape)
            ideal = np.clip(current, 0, bound)
            s.add("d_local", float(np.sum((rate - ideal) ** 2)))
            s.add("ideal", float(np.sum(ideal**2)))
            s.add("saturated", float(np.count_nonzero(rate >= bound * (1 - 1e-6))))


def _compare_outputs(got: np.ndarray, ref: np.ndarray, s: _Sums) -> None:
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    s.add("d_out", float(np.sum((got - ref) ** 2)))
    s.add("a", float(np.sum(ref**2)))
    if ref.ndim >= 2:
        s.add("count", len(ref))
        agree = got.reshape(len(got), -1).argmax(1) == ref.reshape(len(ref), -1).argmax(1)
        s.add("agree", float(np.count_nonzero(agree)))
