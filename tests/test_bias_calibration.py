"""Bias calibration: each corrected site's mean current error, on the calibration data, is gone
from the finished SNN; folded into the layer computing it where it can be; one pass with Alg 2."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import icsnn_onnx
from icsnn_onnx.runtime.instrument import expose, neuron_layers
from tests.conftest import EXAMPLE, run
from tests.test_graded import _digits_cnn


def _mean_current_errors(snn: onnx.ModelProto, ann: onnx.ModelProto, x: np.ndarray) -> dict[str, float]:
    """Per neuron layer, the largest |per-channel mean over samples, positions and steps of the
    SNN's current − the ANN's pre-activation| relative to the ANN's mean |pre-activation|."""
    errors = {}
    ann_names = {t for n in ann.graph.node for t in n.output}
    for layer in neuron_layers(snn):
        reference = layer.current.removesuffix("__calibrated")
        if reference not in ann_names or len(set(layer.currents)) == 1:  # a first layer: the ANN's
            continue
        steps = run(expose(snn, list(layer.currents)), x, list(layer.currents))
        (z_ann,) = run(expose(ann, [reference]), x, [reference])
        axes = (0, 2, 3) if z_ann.ndim == 4 else (0,)
        gap = np.mean(np.mean(steps, axis=0) - z_ann, axis=axes)
        errors[layer.name] = float(np.abs(gap).max() / np.abs(z_ann).mean())
    return errors


def _example() -> tuple[onnx.ModelProto, np.ndarray]:
    """The shipped example's trained CNN and 200 of its calibration images (what Alg 2's pass
    reads: it takes at most 256)."""
    return onnx.load(EXAMPLE / "digits_cnn.onnx"), np.load(EXAMPLE / "calib.npz")["x"][:200]


@pytest.mark.parametrize("levels", [1, 3])
def test_the_mean_current_error_of_every_corrected_site_is_removed(levels):
    model, x = _example()
    plain = icsnn_onnx.convert(model, x, T=2, levels=levels, init="half")
    calibrated = icsnn_onnx.convert(model, x, T=2, levels=levels, init="half", bias_calibration=True)
    meta = {p.key: p.value for p in calibrated.metadata_props}
    before, after = _mean_current_errors(plain, model, x), _mean_current_errors(calibrated, model, x)
    assert int(meta["icsnn.bias_sites"]) >= 1 and after
    assert max(before.values()) > 1e-2  # there was a mean error to remove
    assert max(after.values()) < 1e-5
    # folded into the Conv computing the current: no node more than without calibration
    assert len(calibrated.graph.node) == len(plain.graph.node)
    (ann,) = run(model, x)
    error = lambda snn: float(np.mean((run(snn, x)[0] - ann) ** 2))  # noqa: E731
    assert error(calibrated) < error(plain)


def test_with_alg_2_one_pass_does_both():
    """With --init calibrated the bias is removed first and Alg 2 fits v(0) to the corrected
    currents, in the same pass; the file records both."""
    model, x = _example()
    snn = icsnn_onnx.convert(model, x, T=2, init="calibrated", bias_calibration=True)
    meta = {p.key: p.value for p in snn.metadata_props}
    assert meta["icsnn.init_method"] == "calibrated" and "icsnn.init_fallback" not in meta
    assert int(meta["icsnn.bias_sites"]) >= 1
    assert max(_mean_current_errors(snn, model, x).values()) < 1e-5


def test_a_calibrated_snn_no_closer_to_the_ann_keeps_no_bias(digits):
    """An untrained net where the corrections do not bring the output closer: none is kept."""
    model, x = _digits_cnn(), digits[0][:200]
    snn = icsnn_onnx.convert(model, x, T=2, init="half", bias_calibration=True)
    meta = {p.key: p.value for p in snn.metadata_props}
    assert meta["icsnn.bias_sites"] == "0" and meta["icsnn.init_fallback"] == "half"
    plain = icsnn_onnx.convert(model, x, T=2, init="half")
    np.testing.assert_array_equal(run(snn, x)[0], run(plain, x)[0])


def test_a_current_read_elsewhere_gets_its_own_add_and_the_reader_does_not_see_it():
    """A Conv output read by the site and by another op: no fold (the other reader would see
    δ); a constant Add on the site's input instead. A sole reader: folded into the Conv's bias."""
    from onnx import helper

    from icsnn_onnx.options import ConversionOptions
    from icsnn_onnx.passes import PassManager
    from icsnn_onnx.passes.activations import RecognizeActivations
    from icsnn_onnx.passes.bias import ApplyCurrentBias
    from icsnn_onnx.passes.canonicalize import Canonicalize, import_model
    from tests import models

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["a"], name="first"),
        helper.make_node("Conv", ["a", "w2", "b2"], ["g"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["g"], ["r"], name="second"),
        helper.make_node("Conv", ["g", "w3"], ["k"], pads=[1, 1, 1, 1]),  # g read twice
        helper.make_node("Add", ["r", "k"], ["s"]),
        helper.make_node("Conv", ["s", "w4"], ["y"]),  # 1×1: spikes of "second" drive a synapse
    ]
    inits = {
        "w1": models._w(4, 1, 3, 3), "b1": np.zeros(4, np.float32),
        "w2": models._w(4, 4, 3, 3), "b2": np.zeros(4, np.float32), "w3": models._w(4, 4, 3, 3),
        "w4": models._w(4, 4, 1, 1),
    }  # fmt: skip
    model = models.make_model(nodes, inits, ["N", 1, 8, 8], ["N", 4, 8, 8])
    program = import_model(model, ConversionOptions())
    PassManager([Canonicalize(), RecognizeActivations()])(program)
    delta = np.array([0.5, -0.25, 1.0, 0.0], np.float32).reshape(4, 1, 1)
    site = {s.nodes[0]: name for name, s in program.sites.items()}
    program.current_bias = {site["first"]: delta, site["second"]: delta}
    PassManager([ApplyCurrentBias()])(program)
    ops = [n.op for n in program.graph.nodes]
    assert ops.count("Add") == 2
    assert f"{site['second']}.current_bias_add" in {n.name for n in program.graph.nodes}
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    corrected = program.to_onnx()
    g, k = run(expose(corrected, ["g", "k"]), x, ["g", "k"])  # g: what the Conv computes, first's δ in
    w4 = inits["w4"][:, :, 0, 0]
    (a_folded,) = run(expose(program.to_onnx(), ["a"]), x, ["a"])
    np.testing.assert_allclose(
        a_folded, np.maximum(run(expose(model, ["h"]), x, ["h"])[0] + delta, 0), atol=1e-6
    )
    (y,) = run(program.to_onnx(), x)
    expected = np.einsum("oc,nchw->nohw", w4, np.maximum(g + delta, 0) + k)  # the Conv reads g itself
    np.testing.assert_allclose(y, expected, atol=1e-5)
