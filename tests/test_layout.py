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


def _unoptimized(model, x):
    """ONNX Runtime without graph optimizations: the layouts' own arithmetic, not its fusions."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


LOOP_CASES = {
    "cnn_bn": (models.cnn_bn, {}),
    "residual": (models.residual_block, {}),
    "concat-calibrated": (models.concat_block, {"init": "calibrated"}),
    "rate": (models.cnn_bn, {"encoding": "rate"}),
    "poisson": (models.cnn_bn, {"encoding": "poisson", "seed": 3}),
    "no-compensation": (models.residual_block, {"compensation": False}),
}


@pytest.mark.parametrize("case", sorted(LOOP_CASES))
def test_loop_layout_is_bit_identical_to_step_major(digits, case):
    """Same steps, same order of sums (per-step outputs sum sequentially in both layouts)."""
    build, kw = LOOP_CASES[case]
    model, x = build(), digits[0][:64]
    unrolled = icsnn_onnx.convert(model, x, T=6, per_step=True, **kw)
    looped = icsnn_onnx.convert(model, x, T=6, per_step=True, layout="loop", **kw)
    assert any(n.op_type == "Loop" for n in looped.graph.node)
    for a, b in zip(_unoptimized(unrolled, x), _unoptimized(looped, x), strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)
    # With ONNX Runtime's optimizations, and without per-step outputs (step-major then sums its
    # steps in one variadic Sum), equal to float rounding.
    (plain,) = run(icsnn_onnx.convert(model, x, T=6, **kw), x)
    (loop,) = run(icsnn_onnx.convert(model, x, T=6, layout="loop", **kw), x)
    assert np.allclose(plain, loop, rtol=1e-5, atol=1e-5)


def test_loop_layout_size_does_not_grow_with_T(digits):
    model, x = models.residual_block(), digits[0][:32]
    sizes = {T: len(icsnn_onnx.convert(model, x, T=T, layout="loop").graph.node) for T in (4, 64)}
    assert sizes[4] == sizes[64]
    weights = {t.name for t in icsnn_onnx.convert(model, x, T=4, layout="loop").graph.initializer}
    looped = icsnn_onnx.convert(model, x, T=4, layout="loop")
    (loop,) = [n for n in looped.graph.node if n.op_type == "Loop"]
    body = loop.attribute[0].g
    assert not {t.name for t in body.initializer} & weights  # the body reads the outer weights
    assert icsnn_onnx.convert(model, x, T=1, layout="loop").graph.node  # T = 1: nothing to loop


def test_loop_layout_with_gates_and_a_shape_query_of_a_stream(digits):
    from tests.test_maxpool import maxpool_cnn

    model, x = maxpool_cnn(), digits[0][:64]
    a = icsnn_onnx.convert(model, x, T=5, maxpool="gate", per_step=True)
    b = icsnn_onnx.convert(model, x, T=5, maxpool="gate", per_step=True, layout="loop")
    for p, q in zip(_unoptimized(a, x), _unoptimized(b, x), strict=True):
        assert np.array_equal(p, q)
    # Flatten written as Reshape(x, Concat(Shape(x)[0], -1)), torch's x.view(x.size(0), -1).
    torch = pytest.importorskip("torch")

    class ViewNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1, self.fc1, self.fc2 = (
                torch.nn.Conv2d(1, 4, 3),
                torch.nn.Linear(144, 16),
                torch.nn.Linear(16, 10),
            )

        def forward(self, x):
            h = torch.relu(self.c1(x))
            return self.fc2(torch.relu(self.fc1(h.view(h.size(0), -1))))

    model = models.torch_export(ViewNet().eval(), np.zeros((1, 1, 8, 8), np.float32), dynamo=False)
    a = icsnn_onnx.convert(model, x, T=5, per_step=True)
    b = icsnn_onnx.convert(model, x, T=5, per_step=True, layout="loop")
    for p, q in zip(_unoptimized(a, x), _unoptimized(b, x), strict=True):
        assert np.array_equal(p, q)


def test_loop_layout_refuses_the_cpu_target():
    with pytest.raises(ValueError, match="portable"):
        icsnn_onnx.ConversionOptions(layout="loop", target="cpu")


def test_auto_takes_the_loop_above_its_operator_budget(digits, monkeypatch):
    """`--layout auto` keeps a graph unrolled (time-batched where exact) up to AUTO_LOOP_OPS
    operators and takes the loop above, whose output is the same to float rounding."""
    from icsnn_onnx.passes import scale, unroll

    model, calib = models.cnn_bn(), digits[0][:16]
    small = icsnn_onnx.convert(model, calib, T=8, layout="auto", init="half")
    assert _meta(small)["icsnn.layout"] == "time-batched"
    monkeypatch.setattr(unroll, "AUTO_LOOP_OPS", 100)
    monkeypatch.setattr(scale, "AUTO_LOOP_OPS", 100)
    large = icsnn_onnx.convert(model, calib, T=8, layout="auto", init="half")
    assert _meta(large)["icsnn.layout"] == "loop"
    x = digits[0][16:48]
    np.testing.assert_allclose(run(large, x)[0], run(small, x)[0], rtol=1e-5, atol=1e-5)
