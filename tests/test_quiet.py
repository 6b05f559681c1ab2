"""Conversion leaves the terminal to the CLI: dependencies' chatter goes to the log."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import icsnn_onnx
from icsnn_onnx.quiet import quiet_dependencies
from tests import models


def _model_with_unused_initializer() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "unused")],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7
    ).SerializeToString()


def test_onnx_runtime_warnings_are_silenced_inside_and_restored_after(capfd):
    ort.InferenceSession(_model_with_unused_initializer(), providers=["CPUExecutionProvider"])
    assert "Removing initializer" in capfd.readouterr().err  # the warning this test hides
    with quiet_dependencies(), quiet_dependencies():  # nesting keeps the outer setting
        with quiet_dependencies():
            pass
        ort.InferenceSession(_model_with_unused_initializer(), providers=["CPUExecutionProvider"])
    assert capfd.readouterr().err == ""
    ort.InferenceSession(_model_with_unused_initializer(), providers=["CPUExecutionProvider"])
    assert "Removing initializer" in capfd.readouterr().err


def _big_constant_model():
    """A Gemm whose 4 MiB weight is a ConstantOfShape fill (the model zoo's form): graphsurgeon's
    constant folding warns about large outputs."""
    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["w"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.001]),
        ),
        helper.make_node("Gemm", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2"], ["y"], transB=1),
    ]
    inits = {"shape": np.array([64, 16384], np.int64), "w2": models._w(10, 16384)}
    return models.make_model(nodes, inits, ["N", 64], ["N", 10])


def test_conversion_prints_nothing_and_debug_logs_what_dependencies_said(capfd, caplog):
    model = _big_constant_model()
    x = np.random.default_rng(0).random((8, 64), dtype=np.float32)
    with caplog.at_level(logging.DEBUG, logger="icsnn_onnx.dependencies"):
        icsnn_onnx.convert(model, x, T=4)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert any("onnx-graphsurgeon" in r.getMessage() and "large" in r.getMessage() for r in caplog.records)
