"""The converted file is a drop-in replacement for the ANN in any ONNX Runtime deployment."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import icsnn_onnx
from icsnn_onnx.contract import NEURON_DOMAIN
from icsnn_onnx.neurons import IF
from tests import models
from tests.conftest import run

T = 8


@pytest.fixture(scope="module")
def converted(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "cnn.onnx"
    onnx.save(models.cnn_bn(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    # A T-independent threshold, so that per-step entry t-1 is the model compiled for T = t.
    # θ/2 (data-free), so that the per-step entries are the θ/2 models of each T too.
    snn = icsnn_onnx.convert(
        path, digits[0][:200], T=T, per_step=True, channel_wise=True, threshold="p99.99", init="half"
    )
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # input untouched
    return onnx.load(path), snn


def _io(model):
    def spec(v):
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        return v.name, v.type.tensor_type.elem_type, dims

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def test_same_inputs_and_outputs(converted):
    ann, snn = converted
    ann_in, ann_out = _io(ann)
    snn_in, snn_out = _io(snn)
    assert snn_in == ann_in
    assert snn_out[0] == ann_out[0]
    assert snn_out[1] == ("y_per_step", onnx.TensorProto.FLOAT, [T, "N", 10])


def test_valid_and_accepted_by_onnx_runtime(converted):
    _, snn = converted
    onnx.checker.check_model(snn, full_check=True)
    assert snn.ir_version <= 10  # opset 21 needs IR 10; onnx's default (newer) is refused by older runtimes
    assert {(o.domain, o.version) for o in snn.opset_import} >= {("", 21), (NEURON_DOMAIN, 1)}
    assert [f.name for f in snn.functions] == [IF.op_type]
    session = ort.InferenceSession(snn.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["y", "y_per_step"]


def test_dynamic_batch_and_per_step_outputs(converted, digits):
    ann, snn = converted
    for n in (1, 7):
        y, per_step = run(snn, digits[0][:n])
        assert y.shape == (n, 10) and per_step.shape == (T, n, 10)
        assert np.allclose(per_step[-1], y, atol=1e-6)  # the last entry is the full read-out
    # Entry t-1 is the read-out after t steps: a separate conversion with T = t agrees.
    two = icsnn_onnx.convert(ann, digits[0][:200], T=2, channel_wise=True, threshold="p99.99", init="half")
    (y2,) = run(two, digits[0][:7])
    assert np.allclose(per_step[1], y2, atol=1e-5)


def test_metadata_survives_a_save_load_round_trip(converted, tmp_path):
    _, snn = converted
    path = icsnn_onnx.save_model(snn, tmp_path / "snn.onnx")
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["icsnn.T"] == str(T)
    assert meta["icsnn.init"] == meta["icsnn.init_method"] == "half"
    assert meta["icsnn.threshold"] == meta["icsnn.threshold_method"] == "p99.99"
    assert meta["icsnn.channel_wise"] == "True"
    assert meta["icsnn.encoding"] == "direct"
    assert meta["icsnn.converter_version"] == icsnn_onnx.__version__
    assert meta["icsnn.per_step_outputs"] == "y_per_step"
    assert meta["icsnn.sites"] == "2"


def test_channel_wise_thresholds_and_half_init_are_in_the_model(converted):
    _, snn = converted
    values = {i.name: onnx.numpy_helper.to_array(i) for i in snn.graph.initializer}
    thresholds = {k: v for k, v in values.items() if k.endswith(".threshold")}
    assert len(thresholds) == 2
    for name, theta in thresholds.items():
        assert theta.ndim == 3 and theta.shape[1:] == (1, 1) and np.all(theta > 0)
        assert np.allclose(values[name.replace(".threshold", ".v_init")], theta / 2)


def test_unrolled_graph_has_T_neuron_steps_per_site(converted):
    _, snn = converted
    assert sum(n.op_type == IF.op_type for n in snn.graph.node) == 2 * T


def test_save_is_atomic_and_refuses_to_overwrite(converted, tmp_path):
    _, snn = converted
    target = tmp_path / "out.onnx"
    target.write_text("keep me")
    with pytest.raises(icsnn_onnx.OutputExistsError):
        icsnn_onnx.save_model(snn, target)
    assert target.read_text() == "keep me"
    icsnn_onnx.save_model(snn, target, force=True)
    assert onnx.load(target).graph.name == snn.graph.name
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]  # no temporary left behind


@pytest.mark.parametrize(("T", "method"), [(4, "mse"), (17, "mse"), (65, "mse")])
def test_default_threshold_is_auto_and_records_what_it_chose(digits, tmp_path, T, method):
    snn = icsnn_onnx.convert(models.cnn_bn(), digits[0][:64], T=T)
    meta = {p.key: p.value for p in onnx.load(icsnn_onnx.save_model(snn, tmp_path / "s.onnx")).metadata_props}
    assert meta["icsnn.threshold"] == "auto" and meta["icsnn.threshold_method"] == method
