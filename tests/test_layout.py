"""The time-batched layout computes exactly what the step-major reference computes."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import helper

import icsnn_onnx
from tests import models
from tests.conftest import run
from tests.test_conversion import BUILDERS


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _both(model, calib, **kw):
    step = icsnn_onnx.convert(model, calib, layout="step-major", **kw)
    batched = icsnn_onnx.convert(model, calib, layout="time-batched", **kw)
    assert _meta(step)["icsnn.layout"] == "step-major"
    assert _meta(batched)["icsnn.layout"] == "time-batched"
    return step, batched


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("per_step", [False, True])
def test_layouts_agree(digits, name, per_step):
    model, x = BUILDERS[name](digits)
    step, batched = _both(model, x[:200], T=6, per_step=per_step)
    for a, b in zip(run(step, x[200:264]), run(batched, x[200:264]), strict=True):
        assert a.shape == b.shape
        assert np.allclose(a, b, rtol=1e-4, atol=1e-4)
    if not per_step:
        assert len(batched.graph.node) < len(step.graph.node)


def test_layouts_agree_on_sklearn_and_multi_input(digits):
    x, y = digits
    flat = x.reshape(len(x), -1)
    mlp = models.sklearn_mlp(flat[:800], y[:800])
    step, batched = _both(mlp, flat[:200], T=8, per_step=True)
    for a, b in zip(run(step, flat[900:]), run(batched, flat[900:]), strict=True):
        assert np.allclose(a, b, atol=1e-5)
    two = models.two_inputs()
    feats = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    step, batched = _both(two, {"image": x[:300], "features": feats}, T=5)
    feeds = {"image": x[:50], "features": feats[:50]}
    assert np.allclose(run(step, feeds)[0], run(batched, feeds)[0], atol=1e-5)


def _static_batch_reshape() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "c"], ["h"], name="conv"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("Reshape", ["a", "shape"], ["f"], name="fixed_reshape"),
        helper.make_node("Gemm", ["f", "w"], ["h2"], transB=1, name="fc"),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "w2"], ["y"], transB=1, name="out"),
    ]
    inits = {
        "c": models._w(2, 1, 3, 3),
        "shape": np.array([4, 72], np.int64),
        "w": models._w(16, 72),
        "w2": models._w(10, 16),
    }
    return models.make_model(nodes, inits, [4, 1, 8, 8], [4, 10])


def test_auto_falls_back_to_step_major_when_batching_would_change_meaning(digits, caplog):
    model = _static_batch_reshape()
    with caplog.at_level(logging.WARNING, logger="icsnn_onnx"):
        snn = icsnn_onnx.convert(model, digits[0][:8], T=4, layout="auto")
    assert _meta(snn)["icsnn.layout"] == "step-major"
    assert "fixed_reshape" in caplog.text
    with pytest.raises(icsnn_onnx.ConversionError, match=r"fixed_reshape .*fixes the batch size"):
        icsnn_onnx.convert(model, digits[0][:8], T=4, layout="time-batched")
    (ann,), (out,) = run(model, digits[0][:4]), run(snn, digits[0][:4])
    assert out.shape == ann.shape


def test_time_batched_hoists_the_input_layer(digits):
    """Under direct coding the first Conv runs once, not T times, in both layouts."""
    for layout in ("step-major", "time-batched"):
        snn = icsnn_onnx.convert(models.cnn_bn(), digits[0][:100], T=8, layout=layout)
        convs = [n for n in snn.graph.node if n.op_type == "Conv"]
        first = [n for n in convs if "x" in n.input]
        assert len(first) == 1
        assert len(convs) == (1 + 8 if layout == "step-major" else 2)
