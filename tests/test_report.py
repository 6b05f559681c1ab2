"""report: spike statistics and synaptic operations, checked against hand and brute-force counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

import icsnn_onnx
from icsnn_onnx.analysis.accumulate import accumulate
from icsnn_onnx.analysis.activity import layer_family as _layer_family
from icsnn_onnx.analysis.readout_by_step import StepReadout
from icsnn_onnx.analysis.report import EnergyModel, report
from icsnn_onnx.cli import main
from icsnn_onnx.contract import SnnMetadata
from icsnn_onnx.data import Dataset
from icsnn_onnx.runtime import Session
from icsnn_onnx.runtime.evaluate import evaluate
from icsnn_onnx.runtime.instrument import neuron_layers
from tests import models
from tests.conftest import run

T = 6


def _cost(fn, shape: tuple[int, ...]) -> np.ndarray:
    """Brute force: per element, the weights a single spike there is added with (all weights 1)."""
    cost = np.zeros(int(np.prod(shape)))
    for e in range(cost.size):
        onehot = torch.zeros(int(np.prod(shape)))
        onehot[e] = 1.0
        cost[e] = float(fn(onehot.reshape(1, *shape)).sum())
    return cost.reshape(shape)


def _spike_counts(snn, x: np.ndarray) -> dict[str, np.ndarray]:
    """Per neuron layer, every neuron's spike count per sample, from the plain SNN's step outputs."""
    layers = neuron_layers(snn)
    names = [name for layer in layers for name in layer.outputs]
    got = dict(zip(names, run(_exposed(snn, names), x, names), strict=True))
    return {layer.tensor: sum((got[o] != 0).astype(np.int64) for o in layer.outputs) for layer in layers}


def _exposed(model, names):
    copy = type(model)()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(n, 1, None) for n in names)
    return copy


@pytest.fixture(scope="module")
def routes_case(digits):
    model, x, y = models.routes_net(), digits[0][:48], digits[1][:48]
    snn = icsnn_onnx.convert(model, digits[0][100:300], T=T, threshold="max")
    return snn, x, y


def test_synaptic_operations_equal_brute_force_fan_out(routes_case):
    snn, x, y = routes_case
    r = report(snn, Dataset({"x": x}, y), batch_size=16, provider="cpu")
    counts = _spike_counts(snn, x)
    ones = torch.ones

    def pool_conv(s):
        pooled = F.avg_pool2d(s, 3, 2, 1, count_include_pad=True) * 9  # a sum-pool: one event per spike
        return F.conv2d(pooled, ones(6, 4, 3, 3), stride=2, padding=1)

    expected = {
        "c2": (counts["a1"] * _cost(pool_conv, (4, 8, 8))).sum(),
        "c3": (counts["a1"] * _cost(lambda s: F.conv2d(s, ones(4, 4, 3, 3), padding=1), (4, 8, 8))).sum(),
        "c4": (counts["a3"] * _cost(lambda s: F.conv2d(s, ones(2, 4, 2, 2), stride=2), (4, 8, 8))).sum(),
        "g1": 16 * (counts["a2"].sum() + counts["a4"].sum()),
    }
    rows = {s.name: s for s in r.synapses}
    for name, value in expected.items():
        assert rows[name].kind == "SOP"
        assert rows[name].sops == pytest.approx(value / len(x), rel=1e-9), name
    assert rows["→ Relu_7"].sops == pytest.approx(counts["a1"].sum() / len(x))  # the residual Add
    for dense in ("c1", "g2"):  # the input layer (direct coding) and the output layer (read-out)
        assert rows[dense].kind == "MAC" and rows[dense].snn_macs == rows[dense].ann_macs
    # the ANN's MACs, dense: c1 has 4·9 weights per output position, minus the border's padding
    assert rows["c1"].ann_macs == F.conv2d(torch.ones(1, 1, 8, 8), ones(4, 1, 3, 3), padding=1).sum()
    assert rows["g1"].ann_macs == 16 * 56 and rows["g2"].ann_macs == 160
    e = r.energy
    assert e["sops_per_sample"] == pytest.approx(sum(s.sops for s in r.synapses))
    dense = rows["c1"].snn_macs + rows["g2"].snn_macs
    assert e["snn_joules_per_sample"] == pytest.approx(0.9e-12 * e["sops_per_sample"] + 4.6e-12 * dense)
    assert e["neuron_updates_per_sample"] == T * sum(c[0].size for c in counts.values())
    assert r.notes == ()


def test_spike_statistics_equal_hand_counts(routes_case):
    snn, x, y = routes_case
    r = report(snn, Dataset({"x": x}, y), batch_size=20, provider="cpu")
    layers = neuron_layers(snn)
    names = [n for layer in layers for n in layer.outputs]
    got = dict(zip(names, run(_exposed(snn, names), x, names), strict=True))
    by_name = {layer.name: layer for layer in r.layers}
    for layer in layers:
        spikes = np.stack([got[o] != 0 for o in layer.outputs])  # [T, N, …]
        stats = by_name[layer.name]
        count = spikes.sum(axis=0)
        assert stats.neurons == count[0].size
        assert stats.firing_rate == pytest.approx(spikes.mean())
        assert stats.never_fired == pytest.approx(np.mean(count == 0))
        assert stats.always_fired == pytest.approx(np.mean(count == T))
        first = spikes.argmax(axis=0)[count > 0] + 1
        assert stats.first_spike_mean == pytest.approx(first.mean())
        assert stats.first_spike_histogram == np.bincount(first, minlength=T + 1)[1:].tolist()


def test_instrumented_copy_returns_the_plain_snn_outputs(routes_case):
    snn, x, _ = routes_case
    layers = neuron_layers(snn)
    instrumented, _ = accumulate(snn, [_layer_family(layer) for layer in layers])
    (plain,) = run(snn, x)
    assert np.array_equal(run(instrumented, x, ["y"])[0], plain)


@pytest.mark.parametrize("layout", ["step-major", "time-batched", "loop"])
def test_outputs_after_each_step_equal_a_per_step_file(digits, layout):
    model = models.residual_block()
    x = digits[0][:40]
    options = dict(T=T, layout=layout)
    plain = icsnn_onnx.convert(model, x, **options)
    stepped = icsnn_onnx.convert(model, x, per_step=True, **options)
    meta = SnnMetadata.read({p.key: p.value for p in stepped.metadata_props})
    (reference,) = run(stepped, x, [meta.per_step["y"]])
    readout = StepReadout(plain, neuron_layers(plain), T)
    instrumented = type(plain)()
    instrumented.CopyFrom(plain)
    names = readout.expose(instrumented)
    session = Session(instrumented, provider="cpu")
    got = session.run({"x": x}, [*names, "y"])
    by_t = np.stack([o["y"] for o in readout.outputs_by_t(got, Session(readout.head, provider="cpu"))])
    np.testing.assert_allclose(by_t, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_t[-1], got["y"], rtol=1e-6, atol=1e-6)  # summation order only


def test_every_layout_reports_the_same(digits):
    model, x, y = models.concat_block(), digits[0][:32], digits[1][:32]
    calib = digits[0][200:300]
    records = []
    for layout in ("step-major", "time-batched", "loop"):
        snn = icsnn_onnx.convert(model, calib, T=T, layout=layout, encoding="rate")
        records.append(report(snn, Dataset({"x": x}, y), model, batch_size=8, provider="cpu"))
    first = records[0]
    assert first.accuracy_by_t is not None and len(first.accuracy_by_t) == T
    for other in records[1:]:
        assert other.accuracy_by_t == pytest.approx(first.accuracy_by_t)
        assert [s.sops for s in other.synapses] == pytest.approx([s.sops for s in first.synapses])
        assert [la.firing_rate for la in other.layers] == pytest.approx(
            [la.firing_rate for la in first.layers]
        )
    rows = {s.name: s for s in first.synapses}
    assert rows["Conv_0"].kind == "SOP"  # rate-coded input: the first layer receives spikes too


def test_report_accuracy_equals_evaluate_and_correlation_is_high(digits):
    model = models.cnn_bn()
    x, y = digits[0][:60], digits[1][:60]
    snn = icsnn_onnx.convert(model, digits[0][300:500], T=32)
    r = report(snn, Dataset({"x": x}, y), model, batch_size=25, provider="cpu")
    assert r.accuracy == pytest.approx(evaluate(Session(snn, provider="cpu"), Dataset({"x": x}, y)).accuracy)
    assert all(layer.correlation is not None and layer.correlation > 0.9 for layer in r.layers)
    assert r.agreement_by_t is not None and r.agreement_by_t[-1] >= r.agreement_by_t[0]
    assert r.energy["e_ac_joules"] == EnergyModel().e_ac


def test_cli_report_writes_json_and_plots(tmp_path, digits, capsys):
    model = models.cnn_bn()
    ann, snn, data = tmp_path / "ann.onnx", tmp_path / "snn.onnx", tmp_path / "d.npz"
    ann.write_bytes(model.SerializeToString())
    snn.write_bytes(icsnn_onnx.convert(model, digits[0][:100], T=8).SerializeToString())
    np.savez(data, x=digits[0][:40], y=digits[1][:40])
    out = tmp_path / "report"
    assert main(["report", str(snn), "--data", str(data), "--ann", str(ann), "-o", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "synaptic layer" in text and "energy per sample" in text and "convention:" in text
    record = json.loads((out / "report.json").read_text())
    assert record["samples"] == 40 and record["T"] == 8 and len(record["accuracy_by_t"]) == 8
    assert set(record["versions"]) >= {"icsnn_onnx", "onnx", "onnxruntime"}
    for png in ("accuracy_vs_t", "firing_rate", "sops_vs_macs", "first_spike_latency"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(snn), "--data", str(data), "--json", "--e-ac", "1", "--e-mac", "2", "-q"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["energy"]["e_ac_joules"] == pytest.approx(1e-12)
    assert record["ann_accuracy"] is None and record["agreement_by_t"] is None


@pytest.mark.parametrize("layout", ["step-major", "loop"])
def test_a_maxpool_gate_counts_the_spikes_it_forwards(digits, layout):
    from tests.test_maxpool import POOLS, maxpool_cnn

    model = maxpool_cnn(POOLS["3x3-pad"])
    x, y = digits[0][:30], digits[1][:30]
    snn = icsnn_onnx.convert(model, digits[0][:200], T=T, maxpool="gate", layout=layout)
    r = report(snn, Dataset({"x": x}, y), batch_size=10, provider="cpu")
    unrolled = icsnn_onnx.convert(model, digits[0][:200], T=T, maxpool="gate")
    names = [f"p@{t}" for t in range(1, T + 1)]  # the gate's output: the winners' spikes
    forwarded = sum((p != 0).astype(np.int64) for p in run(_exposed(unrolled, names), x, names))
    conv = _cost(lambda s: F.conv2d(s, torch.ones(12, 8, 3, 3), padding=1), (8, 4, 4))
    rows = {s.name: s for s in r.synapses}
    assert rows["conv2"].sops == pytest.approx((forwarded * conv).sum() / len(x))
    # every spike of relu1 enters the gate's comparison once
    assert rows["MaxPool pool.winner"].sops == pytest.approx(
        next(la for la in r.layers if la.name == "relu1").firing_rate * T * 8 * 8 * 8
    )


def test_compensated_units_are_counted_as_dense_work_and_the_report_says_what_spikes(digits):
    """A product of two neuron layers between neurons: its MACs and running means are dense work
    every step (energy at e_mac), spikes into it are no synaptic operations, and the report's
    line says what spikes and what share of the ANN's MACs spikes drive."""
    from tests.test_compensation import OPS, _between

    nodes, inits = OPS["attention-like matmul"]
    model = _between(nodes, inits)
    x = digits[0][:8]
    snn = icsnn_onnx.convert(model, x, T=4, init="half")
    r = report(snn, Dataset({"x": x}), model)
    (unit,) = r.compensated
    # MatMul of [N, 4, 8, 8] by [N, 4, 8, 8]: 4·8·8 outputs of 8 products each, per step
    assert unit.ops == ("MatMul",) and unit.macs_per_step == 4 * 8 * 8 * 8
    # running means of its two inputs (add, multiply) and the change of t·g it emits (multiply, sub)
    assert unit.other_per_step == 2 * 2 * 256 + 2 * 256
    assert unit.per_sample == 4 * (unit.macs_per_step + unit.other_per_step)
    assert r.energy["compensated_ops_per_sample"] == unit.per_sample
    assert not any("MatMul" in s.name and s.op_type == "other" for s in r.synapses)
    # the convolutions read the input (hoisted) or the unit's dense output, the Gemm the read-out:
    # no synaptic layer here is driven by spikes, and the report says the net is mostly dense
    assert r.spike_driven_macs == 0.0 and "1 compensated unit(s)" in r.spiking
    assert "0% of the ANN's multiply-accumulates are driven by spikes" in r.spiking
    assert any(n.startswith("mostly dense: 100%") for n in r.notes)
    assert r.neuron_ops == r.neuron_updates * 5  # IF steps: five operations each
