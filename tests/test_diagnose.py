"""diagnose: per-layer error of an SNN against its ANN, checked against a hand computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import icsnn_onnx
from icsnn_onnx.analysis.diagnose import default_steps, diagnose
from icsnn_onnx.cli import main
from icsnn_onnx.data import Dataset
from icsnn_onnx.neurons.if_neuron import IFParams, simulate
from icsnn_onnx.runtime.instrument import expose, instrument, neuron_layers
from tests import models
from tests.conftest import run


def _one_layer():
    """Conv → ReLU → Flatten → Gemm: the first layer's current is constant over time, so its
    neurons' rates are known in closed form."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z"], ["a"]),
        helper.make_node("Flatten", ["a"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    return models.make_model(
        nodes, {"w": models._w(4, 1, 3, 3), "fc": models._w(10, 256)}, ["N", 1, 8, 8], ["N", 10]
    )


def test_layer_errors_are_the_hand_computed_ones(digits):
    model, x = _one_layer(), digits[0][:40]
    T = 16
    snn = icsnn_onnx.convert(model, x, T=T, threshold="max", init="half")
    (layer,) = neuron_layers(snn)
    assert layer.T == T and layer.tensor == "a" and layer.current == "z"
    z, a = run(expose(model, ["z", "a"]), x)
    theta = layer.threshold
    trace = simulate(
        np.broadcast_to(z, (T, *z.shape)), IFParams(theta.astype(np.float32), (theta / 2).astype(np.float32))
    )
    d = diagnose(snn, model, Dataset({"x": x}), steps=[1, 4, 16], batch_size=16, provider="cpu")
    (got,) = d.layers
    for t in (1, 4, 16):
        rate = trace.out[:t].mean(axis=0)
        expected = np.linalg.norm(rate - a) / np.linalg.norm(a)
        assert got.by_step[t].output_error == pytest.approx(expected, rel=1e-4)
        assert got.by_step[t].input_error == pytest.approx(0.0, abs=1e-6)  # hoisted: the ANN's own
        ideal = np.clip(z, 0, theta)
        assert got.by_step[t].local_error == pytest.approx(
            np.linalg.norm(rate - ideal) / np.linalg.norm(ideal), rel=1e-4
        )
        fired = trace.out[:t].sum(axis=0) > 0
        assert got.by_step[t].overfired == pytest.approx(np.mean(fired & (trace.v[t] < 0)))
    assert got.above_threshold == 0.0  # θ = max over the same data
    assert d.layers[0].by_step[16].output_error < d.layers[0].by_step[4].output_error
    assert d.T == T and set(d.agreement) == {T}


def test_instrumented_model_keeps_the_snn_outputs_first_and_equal(digits):
    model, x = models.residual_block(), digits[0][:32]
    snn = icsnn_onnx.convert(model, x, T=8)
    instrumented, probes = instrument(snn, neuron_layers(snn), [2, 8])
    assert [o.name for o in instrumented.graph.output][: len(snn.graph.output)] == [
        o.name for o in snn.graph.output
    ]
    (plain,) = run(snn, x)
    assert np.array_equal(run(instrumented, x)[0], plain)
    assert len(probes) == 2 * len(neuron_layers(snn))


@pytest.mark.parametrize("kw", [{"layout": "time-batched"}, {"target": "cpu"}, {"per_step": True}], ids=str)
def test_every_layout_and_target_is_traced_and_errors_fall_with_T(digits, kw):
    model, x = models.cnn_bn(), digits[0]
    snn = icsnn_onnx.convert(model, x[:200], T=32, threshold="p99.99", **kw)
    d = diagnose(snn, model, Dataset({"x": x[200:300]}), steps=[2, 32], provider="cpu")
    assert len(d.layers) == 2
    for layer in d.layers:
        assert layer.by_step[32].output_error < layer.by_step[2].output_error
    assert d.output_error[32] < 0.2
    if kw.get("per_step"):
        assert set(d.output_error) == {2, 32} and d.output_error[32] < d.output_error[2]


def test_default_steps():
    assert default_steps(1) == (1,)
    assert default_steps(12) == (1, 2, 4, 8, 12)
    assert default_steps(16) == (1, 2, 4, 8, 16)


def test_cli_diagnose_prints_a_table_and_json(tmp_path, digits, capsys):
    model = models.cnn_bn()
    import onnx

    onnx.save(model, tmp_path / "ann.onnx")
    np.save(tmp_path / "x.npy", digits[0][:50])
    snn = icsnn_onnx.convert(model, digits[0][:50], T=8)
    onnx.save(snn, tmp_path / "snn.onnx")
    args = [
        "diagnose",
        str(tmp_path / "snn.onnx"),
        "--ann",
        str(tmp_path / "ann.onnx"),
        "--data",
        str(tmp_path / "x.npy"),
    ]
    assert main([*args, "-q"]) == 0
    out = capsys.readouterr().out
    assert "t=1" in out and "t=8" in out and "agreement" in out
    assert main([*args, "-q", "--json", "--steps", "2,8"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["steps"] == [2, 8] and len(record["layers"]) == 2
    assert main([*args, "-q", "--steps", "9"]) == 2  # beyond T: a user error
    assert "1..8" in capsys.readouterr().err
    assert (
        main(
            [
                "diagnose",
                str(tmp_path / "ann.onnx"),
                "--ann",
                str(tmp_path / "ann.onnx"),
                "--data",
                str(tmp_path / "x.npy"),
                "-q",
            ]
        )
        == 2
    )
    assert "not an SNN" in capsys.readouterr().err


def test_a_loop_layout_is_traced_after_step_1_and_after_T_as_step_major_is(digits):
    model, x = models.residual_block(), digits[0][:64]
    data = Dataset({"x": x})
    unrolled = diagnose(icsnn_onnx.convert(model, x, T=16), model, data, steps=[1, 16], provider="cpu")
    looped = diagnose(icsnn_onnx.convert(model, x, T=16, layout="loop"), model, data, provider="cpu")
    assert looped.steps == (1, 16)
    for a, b in zip(unrolled.layers, looped.layers, strict=True):
        for t in (1, 16):
            assert a.by_step[t].output_error == pytest.approx(b.by_step[t].output_error, rel=1e-4)
            assert a.by_step[t].overfired == pytest.approx(b.by_step[t].overfired, abs=0.01)
    with pytest.raises(icsnn_onnx.DataError, match="after step 1 and after T"):
        diagnose(icsnn_onnx.convert(model, x, T=16, layout="loop"), model, data, steps=[4], provider="cpu")
