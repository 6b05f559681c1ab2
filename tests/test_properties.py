"""Property-based tests: random small feed-forward graphs from the supported op set.

Each example is a network built with onnx.helper — Conv (1×1 or 3×3) with or without BN, a
ReLU or a Clip(0, λ), then optionally an AveragePool, a (padded) MaxPool, a Pad, a residual Add
or a Concat with the block before — ending in Flatten (or Reshape), Gemm, ReLU, Gemm. Properties:
conversion succeeds (every op is supported) or raises a typed error naming a node; the SNN's
error against the ANN at T=256 is no larger than at T=8 (between them it need not fall
monotonically: with θ = λ of a Clip far above its activations nothing fires at T=8 — error 1 —
and the first coarse spikes can overshoot, as hypothesis found); the layouts and targets compute
the same function; converting twice gives the same bytes.

Derandomized with a fixed example budget (the ``ci`` profile, conftest.py), so CI runs the same
examples every time; ``HYPOTHESIS_PROFILE=dev`` explores more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from onnx import helper

import icsnn_onnx
from tests import models
from tests.conftest import relative_error, run


@dataclass(frozen=True)
class Block:
    channels: int
    kernel: int
    batchnorm: bool
    activation: str  # relu | clip
    extra: str  # none | avgpool | maxpool | maxpool-pad | pad | residual | concat


BLOCK = st.builds(
    Block,
    channels=st.integers(2, 6),
    kernel=st.sampled_from([1, 3]),
    batchnorm=st.booleans(),
    activation=st.sampled_from(["relu", "clip"]),
    extra=st.sampled_from(["none", "avgpool", "maxpool", "maxpool-pad", "pad", "residual", "concat"]),
)


@st.composite
def networks(draw: st.DrawFn) -> tuple[onnx.ModelProto, int]:
    blocks = draw(st.lists(BLOCK, min_size=1, max_size=3))
    size = draw(st.sampled_from([6, 8]))
    flatten = draw(st.sampled_from(["Flatten", "Reshape"]))
    seed = draw(st.integers(0, 2**16))
    return build(blocks, size, flatten, seed), seed


def build(blocks: list[Block], size: int, flatten: str, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, np.ndarray] = {}
    x, channels, side = "x", 1, size

    def weight(name: str, *shape: int) -> str:
        fan_in = int(np.prod(shape[1:]))
        inits[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return name

    for i, b in enumerate(blocks):
        h = f"h{i}"
        pad = b.kernel // 2
        nodes.append(
            helper.make_node(
                "Conv", [x, weight(f"w{i}", b.channels, channels, b.kernel, b.kernel)], [h], pads=[pad] * 4
            )
        )
        if b.batchnorm:
            c = b.channels
            inits.update(
                {
                    f"g{i}": rng.uniform(0.5, 1.5, c).astype(np.float32),
                    f"be{i}": rng.uniform(-0.3, 0.3, c).astype(np.float32),
                    f"m{i}": rng.uniform(-0.3, 0.3, c).astype(np.float32),
                    f"v{i}": rng.uniform(0.5, 2.0, c).astype(np.float32),
                }
            )
            nodes.append(
                helper.make_node("BatchNormalization", [h, f"g{i}", f"be{i}", f"m{i}", f"v{i}"], [f"{h}n"])
            )
            h = f"{h}n"
        a = f"a{i}"
        if b.activation == "relu":
            nodes.append(helper.make_node("Relu", [h], [a]))
        else:
            inits[f"lo{i}"], inits[f"hi{i}"] = np.float32(0), np.float32(rng.uniform(0.5, 3.0))
            nodes.append(helper.make_node("Clip", [h, f"lo{i}", f"hi{i}"], [a]))
        out, out_channels = a, b.channels
        if b.extra == "avgpool" and side >= 4:
            nodes.append(helper.make_node("AveragePool", [a], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            out, side = f"p{i}", side // 2
        elif b.extra == "maxpool" and side >= 4:
            nodes.append(helper.make_node("MaxPool", [a], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            out, side = f"p{i}", side // 2
        elif b.extra == "maxpool-pad":
            nodes.append(
                helper.make_node("MaxPool", [a], [f"p{i}"], kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4)
            )
            out = f"p{i}"
        elif b.extra == "pad":
            inits[f"pads{i}"] = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
            nodes.append(helper.make_node("Pad", [a, f"pads{i}"], [f"p{i}"], mode="constant"))
            out, side = f"p{i}", side + 2
        elif b.extra == "residual" and i > 0 and out_channels == channels:
            nodes.append(helper.make_node("Add", [a, x], [f"s{i}"]))
            nodes.append(helper.make_node("Relu", [f"s{i}"], [f"r{i}"]))
            out = f"r{i}"
        elif b.extra == "concat" and i > 0:
            nodes.append(helper.make_node("Concat", [a, x], [f"c{i}"], axis=1))
            out, out_channels = f"c{i}", out_channels + channels
        x, channels = out, out_channels
    features = channels * side * side
    if flatten == "Flatten":
        nodes.append(helper.make_node("Flatten", [x], ["f"]))
    else:
        inits["shape"] = np.array([-1, features], np.int64)
        nodes.append(helper.make_node("Reshape", [x, "shape"], ["f"]))
    nodes += [
        helper.make_node("Gemm", ["f", weight("fc1", 12, features)], ["fc_h"], transB=1),
        helper.make_node("Relu", ["fc_h"], ["fc_a"]),
        helper.make_node("Gemm", ["fc_a", weight("fc2", 10, 12)], ["y"], transB=1),
    ]
    return models.make_model(nodes, inits, ["N", 1, size, size], ["N", 10])


def _data(model: onnx.ModelProto, seed: int) -> np.ndarray:
    side = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    return np.random.default_rng(seed).random((96, 1, side, side), dtype=np.float32)


@given(networks())
def test_conversion_succeeds_or_names_a_node(example):
    model, seed = example
    x = _data(model, seed)
    try:
        icsnn_onnx.convert(model, x[:48], T=4)
    except icsnn_onnx.UnsupportedOperatorError as err:
        assert err.nodes and all(n.name and n.op_type for n in err.nodes)
        pytest.fail(f"a supported op set was refused: {err}")


@given(networks())
def test_error_at_large_T_is_no_larger_than_at_small_T(example):
    model, seed = example
    x = _data(model, seed)
    (ann,) = run(model, x[48:])
    assume(np.abs(ann).max() > 0)  # a random net whose last ReLU never fires has no error to measure
    errors = {}
    for T in (8, 256):
        snn = icsnn_onnx.convert(model, x[:48], T=T, threshold="max", init="half", layout="loop")
        errors[T] = relative_error(run(snn, x[48:])[0], ann)
    assert errors[256] <= errors[8] * 1.02 + 1e-6, errors


@given(networks())
def test_layouts_and_targets_compute_the_same_function(example):
    model, seed = example
    x = _data(model, seed)
    # θ/2: Alg 2 would be rerun per layout (test_defaults checks that it too is layout-free).
    reference = run(icsnn_onnx.convert(model, x[:48], T=6, init="half"), x[48:])[0]
    for options in ({"layout": "loop"}, {"layout": "auto"}, {"target": "cpu"}):
        (out,) = run(icsnn_onnx.convert(model, x[:48], T=6, init="half", **options), x[48:])
        assert np.allclose(out, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max()), options


@given(networks())
def test_converting_twice_gives_the_same_bytes(example):
    model, seed = example
    x = _data(model, seed)
    # θ/2, and Alg 2 (what --init auto picks with data) at a small T, where it is cheap.
    for options in (
        {"init": "half"},
        {"per_step": True, "layout": "loop", "init": "half"},
        {"init": "calibrated", "T": 2},
    ):
        first = icsnn_onnx.convert(model, x[:48], **options).SerializeToString()
        assert icsnn_onnx.convert(model, x[:48], **options).SerializeToString() == first, options
