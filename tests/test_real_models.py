"""Graphs nobody here wrote: the ONNX model zoo's opset-9 graphs that ship inside ``onnx``.

Weights are seeded random fills (benchmarks/onnx_zoo.py, not cached from the tests); the
benchmark (benchmarks/architectures.py) measures all nine and torchvision's and Keras' exports.
"""

from __future__ import annotations

import pytest

import icsnn_onnx
from tests.conftest import load_benchmark, relative_error, run

zoo = load_benchmark("onnx_zoo")
common = load_benchmark("_common")


def test_every_light_model_zoo_graph_ships_with_onnx():
    assert len(zoo.NAMES) == 9


def test_squeezenet_ir3_converts_and_converges():
    model = zoo.randomized("squeezenet", cache=False)
    assert model.ir_version == 3  # weights listed among the graph inputs, as the zoo writes them
    x = common.smooth_images(3, 224, seed=1)
    (ann,) = run(model, x[:1])
    errors = {}
    for T in (8, 64):
        snn = icsnn_onnx.convert(model, x, T=T, layout="loop", init="half")  # Alg 2 here: alg2_scale.py
        assert [i.name for i in snn.graph.input] == ["data_0"]
        (out,) = run(snn, x[:1])
        errors[T] = relative_error(out, ann)
    assert errors[64] < errors[8], errors


@pytest.mark.parametrize("name", ["inception_v1", "bvlc_alexnet"])
def test_lrn_is_compensated_and_every_lrn_is_named(name):
    """Inception v1's padded MaxPools read Concats and MaxPools (provably non-negative) and
    decompose; its two LRNs, a normalization across channels, are compensated units (dense),
    each named with its output."""
    model = zoo.randomized(name, cache=False) if name == "inception_v1" else None
    if model is None:  # AlexNet's weights are 61M parameters: inspect the fills, not random ones
        import onnx

        model = onnx.load(zoo.LIGHT / f"light_{name}.onnx")
    report = icsnn_onnx.inspect_model(model)
    assert not report.blockers and report.convertible
    assert [u.op_types for u in report.units] == [("LRN",), ("LRN",)]
    assert all("LRN is nonlinear" in u.reason for u in report.units)
    assert report.spiking_share == 1.0
