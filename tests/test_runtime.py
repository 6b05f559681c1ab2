"""Runtime: provider choice (quiet CUDA probe with CPU fallback), batching, evaluation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import icsnn_onnx
from icsnn_onnx.data import Dataset
from icsnn_onnx.runtime import Session, cuda_available, evaluate, resolve_providers
from icsnn_onnx.runtime.evaluate import predicted_labels
from tests import models


def test_auto_provider_falls_back_to_cpu_quietly(capfd):
    providers = resolve_providers("auto")
    assert providers[-1] == "CPUExecutionProvider"
    assert (providers[0] == "CUDAExecutionProvider") == cuda_available()
    captured = capfd.readouterr()
    assert "error" not in (captured.err + captured.out).lower()  # the probe logs nothing


def test_explicit_cuda_without_cuda_is_a_user_error():
    if cuda_available():
        pytest.skip("CUDA works here")
    with pytest.raises(icsnn_onnx.ProviderUnavailableError, match="CUDA"):
        resolve_providers("cuda")


def test_unknown_provider():
    with pytest.raises(ValueError):
        resolve_providers("tpu")


def test_session_runs_batches_and_static_batch_models(digits):
    model = models.cnn_bn()
    x = digits[0][:10]
    reference = Session(model, provider="cpu").run(x)["y"]
    # The same network with a static batch of 4: batches are padded and trimmed.
    static = onnx.ModelProto()
    static.CopyFrom(model)
    for value in (*static.graph.input, *static.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    session = Session(static, provider="cpu")
    assert session.inputs[0].static_batch == 4
    out = session.run_all(Dataset({"x": x}), batch_size=3)["y"]
    assert out.shape == (10, 10) and np.allclose(out, reference, atol=1e-5)


def test_evaluate_per_step_accuracy(digits):
    x, y = digits
    snn = icsnn_onnx.convert(models.cnn_bn(), x[:100], T=6, per_step=True)
    result = evaluate(Session(snn), Dataset({"x": x[:50]}, y[:50]), batch_size=16)
    assert result.samples == 50 and len(result.per_step_accuracy) == 6
    assert result.per_step_accuracy[-1] == result.accuracy


def test_predicted_labels():
    assert predicted_labels(np.array([3, 1], np.int64)).tolist() == [3, 1]
    assert predicted_labels(np.array([[0.1, 0.9], [2.0, 1.0]])).tolist() == [1, 0]
    with pytest.raises(icsnn_onnx.DataError):
        predicted_labels(np.array([0.5, 0.2]))


def test_cuda_options_reach_the_cuda_provider_and_are_ignored_off_cuda(monkeypatch):
    import onnxruntime as ort

    from icsnn_onnx.runtime import session as session_module

    seen, real = [], ort.InferenceSession

    class Recording:
        def __init__(self, model, options, providers):
            seen.append(providers)
            self._session = real(model, options, providers=["CPUExecutionProvider"])

        def __getattr__(self, name):
            return getattr(self._session, name)

    model = models.mlp_opset9().SerializeToString()
    monkeypatch.setattr(session_module.ort, "InferenceSession", Recording)
    Session(model, provider="cpu", cuda_options={"device_id": 1})
    assert seen[-1] == ["CPUExecutionProvider"]
    monkeypatch.setattr(
        session_module, "resolve_providers", lambda p: [session_module.CUDA, session_module.CPU]
    )
    Session(model, provider="cuda", cuda_options={"device_id": 1, "use_tf32": "0"})
    assert seen[-1] == [(session_module.CUDA, {"device_id": "1", "use_tf32": "0"}), "CPUExecutionProvider"]
    Session(model, provider="cuda", cuda_graph=True, cuda_options={"use_tf32": "0"})
    assert seen[-1] == [
        (session_module.CUDA, {"use_tf32": "0", "enable_cuda_graph": "1"}),
        "CPUExecutionProvider",
    ]


def test_an_input_of_a_type_icsnn_onnx_cannot_feed_is_named_not_read_as_float():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    with pytest.raises(icsnn_onnx.ModelLoadError, match="'s' has type tensor\\(string\\)"):
        Session(model)
