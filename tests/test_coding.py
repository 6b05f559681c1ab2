"""Alg 3 (coding compensation) and the input encodings."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import icsnn_onnx
from icsnn_onnx.calibration.statistics import stream_tensors
from icsnn_onnx.data import Dataset
from tests import models
from tests.conftest import run


def _two_layer_mlp() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "w2"], ["y"], transB=1),
    ]
    return models.make_model(nodes, {"w1": models._w(16, 64), "w2": models._w(10, 16)}, ["N", 64], ["N", 10])


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@pytest.mark.parametrize("init", ["zero", "half"])
def test_compensation_strictly_reduces_read_out_error(digits, init):
    """The read-out neurons' residual potential recovers what their integer spike counts lose.

    Constructed so the read-out is the only error source: one neuron layer fed the same
    current at every step (direct coding), read by a linear layer. With compensation the
    read-out is the integrated membrane through the ReLU, i.e. exactly the ANN.
    """
    x = digits[0].reshape(len(digits[0]), -1)
    model = _two_layer_mlp()
    (ann,) = run(model, x[400:])
    for T in (1, 2, 4, 8):
        (plain,) = run(icsnn_onnx.convert(model, x[:400], T=T, init=init, compensation=False), x[400:])
        (comp,) = run(icsnn_onnx.convert(model, x[:400], T=T, init=init), x[400:])
        plain_error, comp_error = np.abs(plain - ann).mean(), np.abs(comp - ann).mean()
        assert comp_error < plain_error, (T, comp_error, plain_error)
        assert comp_error < 1e-5 * np.abs(ann).mean()


def test_compensation_in_deep_nets_and_both_layouts(digits):
    """Deeper nets: only the last neurons are compensated; still better at low T, layouts agree."""
    x, _ = digits
    model = models.cnn_bn()
    (ann,) = run(model, x[400:900])
    errors = {}
    for comp in (False, True):
        outs = []
        for layout in ("step-major", "time-batched"):
            snn = icsnn_onnx.convert(model, x[:400], T=4, compensation=comp, layout=layout, per_step=True)
            out, per_step = run(snn, x[400:900])
            assert np.allclose(per_step[-1], out, atol=1e-5)
            outs.append(out)
        assert np.allclose(*outs, atol=1e-4)
        errors[comp] = np.abs(outs[0] - ann).mean()
    assert errors[True] < errors[False], errors


def _encoded_steps(snn: onnx.ModelProto, x: np.ndarray, T: int) -> np.ndarray:
    names = [f"x@{t}" for t in range(1, T + 1)]
    (batch,) = list(stream_tensors(snn, names, Dataset({"x": x}), batch_size=len(x)))
    return np.stack([batch[n] for n in names])


@pytest.mark.parametrize("compensation,v0", [(True, 0.5), (False, 0.0)])
def test_rate_encoder_counts_round_with_compensation_and_floor_without(compensation, v0):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 3.0, size=(64, 64)).astype(np.float32)
    x[0, :2] = -1.0, 3.0  # the calibration range is exactly [-1, 3]
    T = 8
    snn = icsnn_onnx.convert(
        _two_layer_mlp(), x, T=T, encoding="rate", compensation=compensation, threshold="max"
    )
    steps = _encoded_steps(snn, x, T)
    spikes = (steps - (-1.0)) / 4.0
    assert np.allclose(spikes, np.round(spikes), atol=1e-5)  # each step carries low or high
    c = (x.astype(np.float64) + 1.0) / 4.0
    expected = np.clip(np.floor(c * T + v0 + 1e-9), 0, T)
    assert np.array_equal(np.round(spikes.sum(0)), expected)
    assert _meta(snn)["icsnn.encoder.x"] == f"rate low=-1 high=3 v0={v0:g}"


def test_poisson_encoder_is_bernoulli_with_the_input_rate_and_seeded():
    x = np.linspace(0.0, 1.0, 64, dtype=np.float32)[None].repeat(8, 0)
    T = 256
    snn = icsnn_onnx.convert(_two_layer_mlp(), x, T=T, encoding="poisson", seed=7, threshold="max")
    steps = _encoded_steps(snn, x, T)
    assert set(np.unique(steps)) <= {0.0, 1.0}
    rate = steps.mean(0)
    # Bernoulli(p) over 256 steps: standard deviation ≤ 1/32; five sigma.
    assert np.all(np.abs(rate - x) <= 5 * np.sqrt(x * (1 - x) / T) + 1e-6)
    assert np.array_equal(rate[0], rate[1])  # the same noise for every sample: batch-independent
    again = icsnn_onnx.convert(_two_layer_mlp(), x, T=T, encoding="poisson", seed=7, threshold="max")
    other = icsnn_onnx.convert(_two_layer_mlp(), x, T=T, encoding="poisson", seed=8, threshold="max")
    assert np.array_equal(_encoded_steps(again, x, T), steps)
    assert not np.array_equal(_encoded_steps(other, x, T), steps)


@pytest.mark.parametrize("encoding", ["rate", "poisson"])
def test_encoded_snn_converges_and_layouts_agree(digits, encoding):
    x, _ = digits
    model = models.cnn_bn()
    (ann,) = run(model, x[400:600])
    agree = {}
    for T in (8, 64):
        outs = [
            run(icsnn_onnx.convert(model, x[:400], T=T, encoding=encoding, layout=layout), x[400:600])[0]
            for layout in ("step-major", "time-batched")
        ]
        assert np.allclose(*outs, atol=1e-4)
        agree[T] = float(np.mean(outs[0].argmax(1) == ann.argmax(1)))
    assert agree[64] >= agree[8] and agree[64] >= 0.9, agree


def test_encoding_needs_calibration_data_for_the_input_range():
    """A ReLU6 net needs no data under direct coding, but rate coding needs the input range."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h1"], transB=1),
        helper.make_node("Clip", ["h1", "zero", "six"], ["a1"]),
        helper.make_node("Gemm", ["a1", "w2"], ["y"], transB=1),
    ]
    inits = {
        "w1": models._w(16, 64),
        "w2": models._w(10, 16),
        "zero": np.zeros((), np.float32),
        "six": np.full((), 6.0, np.float32),
    }
    model = models.make_model(nodes, inits, ["N", 64], ["N", 10])
    icsnn_onnx.convert(model, None, T=4)
    with pytest.raises(icsnn_onnx.CalibrationError, match="input range"):
        icsnn_onnx.convert(model, None, T=4, encoding="rate")


def test_init_compensation_and_encoding_survive_a_save_load_round_trip(tmp_path):
    x = np.random.default_rng(1).uniform(0, 1, size=(32, 64)).astype(np.float32)
    snn = icsnn_onnx.convert(_two_layer_mlp(), x, T=4, init="calibrated", encoding="rate", compensation=False)
    path = tmp_path / "snn.onnx"
    onnx.save(snn, path)
    meta = _meta(onnx.load(path))
    assert meta["icsnn.init"] == "calibrated"
    assert meta["icsnn.compensation"] == "False"
    assert meta["icsnn.encoding"] == "rate"
    assert meta["icsnn.encoder.x"].startswith("rate low=")
