"""MaxPool between spiking layers: decompose, gate and avg policies."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import icsnn_onnx
from icsnn_onnx.converter import front_end
from icsnn_onnx.options import ConversionOptions
from icsnn_onnx.passes import PassManager
from icsnn_onnx.passes.canonicalize import import_model
from tests import models
from tests.conftest import relative_error, run


def maxpool_cnn(pool: dict | None = None, signed: bool = False) -> onnx.ModelProto:
    """Conv-ReLU-MaxPool-Conv-ReLU-Flatten-Gemm on 8×8 inputs (the pool sits between neurons).

    ``signed``: Conv-ReLU-Conv-MaxPool-ReLU instead, the pool reading a signed pre-activation.
    """
    pool = pool or {"kernel_shape": [2, 2], "strides": [2, 2]}
    first = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
    ]
    if signed:
        middle = [
            helper.make_node("Conv", ["a1", "w2", "b2"], ["h2"], pads=[1, 1, 1, 1], name="conv2"),
            helper.make_node("MaxPool", ["h2"], ["p"], name="pool", **pool),
            helper.make_node("Relu", ["p"], ["a2"], name="relu2"),
        ]
    else:
        middle = [
            helper.make_node("MaxPool", ["a1"], ["p"], name="pool", **pool),
            helper.make_node("Conv", ["p", "w2", "b2"], ["h2"], pads=[1, 1, 1, 1], name="conv2"),
            helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        ]
    nodes = [
        *first,
        *middle,
        helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    rng = np.random.default_rng(7)  # own weights: not dependent on which tests ran before

    def w(*shape: int, scale: float | None = None) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return (rng.standard_normal(shape) * (scale or np.sqrt(2.0 / fan_in))).astype(np.float32)

    inits = {
        "w1": w(8, 1, 3, 3),
        "b1": w(8, scale=0.1),
        "w2": w(12, 8, 3, 3),
        "b2": w(12, scale=0.1),
        "fc": w(10, 12),
    }
    return models.make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10])


POOLS = {
    "2x2": {"kernel_shape": [2, 2], "strides": [2, 2]},
    "3x3-pad": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    "3x3-ceil": {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    "2x2-dilated": {"kernel_shape": [2, 2], "dilations": [2, 2]},
    "same-upper": {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
}


def _ann_after_front_end(model: onnx.ModelProto, policy: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    program = import_model(model, ConversionOptions(maxpool=policy))
    PassManager(front_end())(program)
    return program.to_onnx(), program.maxpools


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_decomposition_equals_maxpool_on_the_ann_side(digits, pool):
    model = maxpool_cnn(POOLS[pool])
    rewritten, policies = _ann_after_front_end(model, "decompose")
    assert policies == {"pool": "decompose"}
    assert not [n for n in rewritten.graph.node if n.op_type == "MaxPool"]
    relus = [n for n in rewritten.graph.node if n.op_type == "Relu"]
    window = int(np.prod(POOLS[pool]["kernel_shape"]))
    assert len(relus) == 2 + window - 1  # a k-element max is k - 1 pairwise maxima
    x = digits[0][:300]
    (ann,), (out,) = run(model, x), run(rewritten, x)
    assert out.shape == ann.shape
    assert np.allclose(out, ann, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["decompose", "gate"])
def test_spiking_maxpool_converges_as_T_grows(digits, policy):
    model = maxpool_cnn(POOLS["3x3-pad"])
    x = digits[0]
    (ann,) = run(model, x[400:700])
    errors = {}
    for T in (8, 32, 128):
        snn = icsnn_onnx.convert(model, x[:400], T=T, maxpool=policy, threshold="max")
        (out,) = run(snn, x[400:700])
        errors[T] = relative_error(out, ann)
    assert errors[8] > errors[32] > errors[128], errors
    assert errors[128] < 0.1, errors


def test_avg_policy_is_an_average_pool_and_only_approximate(digits):
    model = maxpool_cnn()
    x = digits[0]
    snn = icsnn_onnx.convert(model, x[:400], T=64, maxpool="avg")
    ops = {n.op_type for n in snn.graph.node}
    assert "MaxPool" not in ops and "AveragePool" in ops
    rewritten, _ = _ann_after_front_end(model, "avg")
    (ann,), (avg_ann,) = run(model, x[400:500]), run(rewritten, x[400:500])
    assert not np.allclose(ann, avg_ann, atol=1e-3)  # a different function: the fallback


@pytest.mark.parametrize("policy", ["decompose", "gate"])
def test_maxpool_policies_agree_across_layouts(digits, policy):
    model = maxpool_cnn(POOLS["2x2"])
    x = digits[0]
    outs = [
        run(icsnn_onnx.convert(model, x[:200], T=6, maxpool=policy, layout=layout), x[200:300])[0]
        for layout in ("step-major", "time-batched")
    ]
    assert np.allclose(*outs, atol=1e-4)


def test_gate_forwards_the_unit_with_the_most_accumulated_input():
    """Hand-checked trace: one 2-unit window, spikes of the unit leading in accumulated input."""
    from icsnn_onnx.calibration.statistics import stream_tensors
    from icsnn_onnx.data import Dataset

    # x → Relu (neuron, θ = 1 via Clip) → MaxPool over 2 units → Relu (so the pool feeds a neuron).
    nodes = [
        helper.make_node("Clip", ["x", "zero", "one"], ["a"], name="act"),
        helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2], strides=[2], name="pool"),
        helper.make_node("Clip", ["p", "zero", "one"], ["y"], name="out"),
    ]
    inits = {"zero": np.zeros((), np.float32), "one": np.ones((), np.float32)}
    model = models.make_model(nodes, inits, [1, 1, 2], [1, 1, 1])
    T = 8
    snn = icsnn_onnx.convert(model, None, T=T, init="zero", maxpool="gate", compensation=False)
    x = np.array([[[0.3, 0.5]]], np.float32)  # rates 0.3 and 0.5 (floored spike trains)
    names = [f"a@{t}" for t in range(1, T + 1)] + [f"p@{t}" for t in range(1, T + 1)]
    (values,) = list(stream_tensors(snn, names, Dataset({"x": x}), batch_size=1))
    a = np.stack([values[f"a@{t}"][0, 0] for t in range(1, T + 1)])  # [T, 2] spikes
    p = np.stack([values[f"p@{t}"][0, 0, 0] for t in range(1, T + 1)])
    acc = np.cumsum(a, axis=0)
    expected = a[np.arange(T), acc.argmax(axis=1)]  # first index wins ties, as in MaxPool
    assert np.array_equal(p, expected)
    assert p.sum() == a[:, 1].sum()  # the 0.5-rate unit leads from its first spike on


def test_a_padded_maxpool_of_a_signed_input_is_compensated_under_decompose(digits):
    """Decomposing would pad a signed input with zeros, which could win the max: the pool is a
    compensated unit instead (the max of the mean inputs, dense), and the SNN follows the ANN."""
    model = maxpool_cnn(POOLS["3x3-pad"], signed=True)
    x = digits[0][:50]
    report = icsnn_onnx.inspect_model(model, maxpool="decompose")
    assert dict(report.maxpools) == {"pool": "compensated"} and [u.op_types for u in report.units] == [
        ("MaxPool",)
    ]
    ann = run(model, x)[0]
    errors = [
        relative_error(run(icsnn_onnx.convert(model, x, T=T, maxpool="decompose"), x)[0], ann)
        for T in (4, 64)
    ]
    assert errors[1] < errors[0] and errors[1] < 0.05, errors
    icsnn_onnx.convert(model, x, T=4, maxpool="gate")  # the gate needs no padding value


def test_inspect_reports_the_policy_of_every_maxpool():
    model = maxpool_cnn()
    # A second MaxPool after the last neurons is part of the read-out, whatever the policy.
    graph = model.graph
    tail = next(n for n in graph.node if n.op_type == "GlobalAveragePool")
    tail.CopyFrom(
        helper.make_node("MaxPool", list(tail.input), list(tail.output), kernel_shape=[4, 4], name="tail")
    )
    for policy in ("decompose", "gate", "avg"):
        report = icsnn_onnx.inspect_model(model, maxpool=policy)
        assert dict(report.maxpools) == {"pool": policy, "tail": "read-out"}
        assert report.convertible


def inception_block() -> onnx.ModelProto:
    """A GoogLeNet-style block: Conv-ReLU stem, a padded 3×3/s1 MaxPool of a padded MaxPool of
    it, then an Inception module whose pool branch is a padded MaxPool of the Concat of neuron
    outputs; the pool never reads a neuron directly."""
    rng = np.random.default_rng(11)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)

    pad3 = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["h0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h0"], ["a0"]),
        helper.make_node(
            "MaxPool",
            ["a0"],
            ["m0"],
            name="stem_pool",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[0, 0, 1, 1],
            ceil_mode=1,
        ),
        helper.make_node("MaxPool", ["m0"], ["m1"], name="pool_of_pool", **pad3),
        helper.make_node("Conv", ["m1", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["b1"]),
        helper.make_node("Conv", ["m1", "w2"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["b2"]),
        helper.make_node("Concat", ["b1", "b2"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["pc"], name="concat_pool", **pad3),
        helper.make_node("Conv", ["pc", "w3"], ["h3"]),
        helper.make_node("Relu", ["h3"], ["b3"]),
        helper.make_node("Concat", ["b1", "b2", "b3"], ["out"], axis=1),
        helper.make_node("GlobalAveragePool", ["out"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = {
        "w0": w(6, 1, 3, 3),
        "w1": w(4, 6, 1, 1),
        "w2": w(4, 6, 3, 3),
        "w3": w(4, 8, 1, 1),
        "fc": w(10, 12),
    }
    return models.make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10])


def test_padded_maxpools_of_a_concat_or_a_maxpool_decompose_exactly(digits):
    model = inception_block()
    rewritten, policies = _ann_after_front_end(model, "decompose")
    assert policies == {"stem_pool": "decompose", "pool_of_pool": "decompose", "concat_pool": "decompose"}
    x = digits[0][:300]
    (ann,), (out,) = run(model, x), run(rewritten, x)
    assert np.allclose(out, ann, rtol=1e-5, atol=1e-5)
    errors = {}
    for T in (16, 64):
        snn_model = icsnn_onnx.convert(model, digits[0][:300], T=T, threshold="max", init="half")
        (snn,) = run(snn_model, digits[0][300:500])
        errors[T] = relative_error(snn, run(model, digits[0][300:500])[0])
    assert errors[64] < errors[16] and errors[64] < 0.1, errors


def _pool_between(op: str, **attrs) -> onnx.ModelProto:
    """Conv-ReLU (4×4 maps) → op → Flatten-Gemm-ReLU → Gemm: the pool feeds a neuron."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["h0"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["h0"], ["a0"]),
        helper.make_node(op, ["a0"], ["p"], name="pool", **attrs),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "w2"], ["y"], transB=1),
    ]
    inits = {
        "w0": (rng.standard_normal((6, 1, 3, 3)) * 0.5).astype(np.float32),
        "w1": (rng.standard_normal((16, 6)) * 0.5).astype(np.float32),
        "w2": (rng.standard_normal((10, 16)) * 0.3).astype(np.float32),
    }
    return models.make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10])


@pytest.mark.parametrize("policy", ["decompose", "gate", "avg"])
def test_global_max_pool_between_neurons_follows_the_policy(digits, policy):
    model = _pool_between("GlobalMaxPool")
    rewritten, policies = _ann_after_front_end(model, policy)
    assert policies == {"pool": policy}
    x = digits[0]
    (ann,) = run(model, x[400:600])
    if policy == "decompose":  # exact on the ANN side: the max of 16 values as 15 pairwise maxima
        assert np.allclose(run(rewritten, x[400:600])[0], ann, atol=1e-5)
        assert sum(n.op_type == "Relu" for n in rewritten.graph.node) == 2 + 15
    errors = {}
    for T in (8, 64):
        snn = icsnn_onnx.convert(model, x[:400], T=T, maxpool=policy, threshold="max")
        errors[T] = relative_error(run(snn, x[400:600])[0], ann)
    if policy != "avg":
        assert errors[64] < errors[8] and errors[64] < 0.15, errors


def test_sign_inference_keeps_only_what_is_provably_non_negative():
    from icsnn_onnx.passes.sign import nonnegative_tensors

    c = lambda name, v: helper.make_tensor(name, onnx.TensorProto.FLOAT, [], [v])  # noqa: E731
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Concat", ["r", "r"], ["cat"], axis=1),
        helper.make_node("Mul", ["cat", "pos"], ["scaled"]),
        helper.make_node("Mul", ["cat", "neg"], ["flipped"]),
        helper.make_node("Pad", ["scaled", "pads"], ["padded"]),
        helper.make_node("Pad", ["scaled", "pads", "minus"], ["padded_neg"]),
        helper.make_node("Add", ["padded", "flipped_pad"], ["mixed"]),
        helper.make_node("Pad", ["flipped", "pads"], ["flipped_pad"]),
        helper.make_node("Max", ["flipped", "scaled"], ["max"]),
        helper.make_node("Clip", ["x", "zero"], ["clipped"]),
        helper.make_node("AveragePool", ["padded"], ["avg"], kernel_shape=[2]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4])],
        [
            helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
            for t in ("mixed", "max", "clipped", "avg", "padded_neg")
        ],
        [
            c("pos", 2.0),
            c("neg", -1.0),
            c("minus", -1.0),
            c("zero", 0.0),
            helper.make_tensor("pads", onnx.TensorProto.INT64, [6], [0, 0, 1, 0, 0, 1]),
        ],
    )
    import onnx_graphsurgeon as gs

    g = gs.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    g.toposort()
    got = nonnegative_tensors(g, set())
    assert {"r", "cat", "scaled", "padded", "max", "clipped", "avg"} <= got
    assert not {"flipped", "padded_neg", "mixed", "flipped_pad", "x"} & got
