"""Models a careless user or a strange exporter hands over, built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests import models


def _cnn_nodes(between: list[onnx.NodeProto] | None = None, before: list[onnx.NodeProto] | None = None):
    """Conv-ReLU, optional ops between, Conv-ReLU, Flatten, Gemm on [N, 1, 8, 8]."""
    first = "x" if not before else "pre"
    nodes = [
        *(before or []),
        helper.make_node("Conv", [first, "w1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["a1"]),
    ]
    mid = "a1"
    if between:
        nodes += between
        mid = between[-1].output[0]
    nodes += [
        helper.make_node("Conv", [mid, "w2"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("Flatten", ["a2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = {"w1": models._w(4, 1, 3, 3), "w2": models._w(4, 4, 3, 3), "fc": models._w(10, 256)}
    return nodes, inits


def cnn(between=None, before=None, opset: int = 21, **inits) -> onnx.ModelProto:
    nodes, base = _cnn_nodes(between, before)
    return models.make_model(nodes, {**base, **inits}, ["N", 1, 8, 8], ["N", 10], opset=opset)


def no_outputs() -> onnx.ModelProto:
    model = cnn()
    del model.graph.output[:]
    return model


def _with_custom_domain(nodes, before=None) -> onnx.ModelProto:
    body, inits = _cnn_nodes(nodes, before)
    graph = helper.make_graph(
        body,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.example", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def custom_op_between() -> onnx.ModelProto:
    return _with_custom_domain(
        [helper.make_node("Swizzle", ["a1"], ["s"], domain="com.example", name="swizzle")]
    )


def custom_op_before() -> onnx.ModelProto:
    return _with_custom_domain(
        None, [helper.make_node("Swizzle", ["x"], ["pre"], domain="com.example", name="swizzle")]
    )


def _branch(op: str, x: str, y: str) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node(op, [x], [y])],
        f"{op}_branch",
        [],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
    )


def if_between() -> onnx.ModelProto:
    nodes = [
        helper.make_node("ReduceMean", ["a1"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["c"]),
        helper.make_node(
            "If",
            ["c"],
            ["b"],
            name="branch",
            then_branch=_branch("Identity", "a1", "t"),
            else_branch=_branch("Neg", "a1", "e"),
        ),
    ]
    return cnn(nodes, zero=np.zeros((), np.float32))


def loop_between() -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond"], ["cond_out"]),
            helper.make_node("Add", ["acc", "a1"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
        ],
    )
    nodes = [helper.make_node("Loop", ["three", "", "zero"], ["looped"], body=body, name="loop")]
    return cnn(nodes, three=np.array(3, np.int64), zero=np.zeros((), np.float32))


def typed(dtype: int) -> onnx.ModelProto:
    """A 64-32-10 MLP in another float type (float16, float64: ONNX Runtime's CPU provider has
    Gemm for both, Conv for no double)."""
    np_type = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "w2"], ["y"], transB=1),
    ]
    inits = {"w1": models._w(32, 64), "w2": models._w(10, 32)}
    graph = helper.make_graph(
        nodes,
        "typed",
        [helper.make_tensor_value_info("x", dtype, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", dtype, ["N", 10])],
        [numpy_helper.from_array(v.astype(np_type), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def integer_only() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "ints",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 4])],
        [numpy_helper.from_array(np.ones((), np.int64), "one")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def with_weight(value: float) -> onnx.ModelProto:
    model = cnn()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w.flat[3] = value
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, model.graph.initializer[0].name))
    return model


def huge_constant() -> onnx.ModelProto:
    """A 40 GB ConstantOfShape fill added to the first layer's output."""
    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=fill, name="fill"),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0, name="total"),
        helper.make_node("Add", ["a1", "total"], ["shifted"], name="shift"),
    ]
    return cnn(nodes, shape=np.array([10_000_000_000], np.int64))


def static_batch(batch: int) -> onnx.ModelProto:
    nodes, inits = _cnn_nodes()
    return models.make_model(nodes, inits, [batch, 1, 8, 8], [batch, 10])


def newer_opset() -> onnx.ModelProto:
    model = cnn()
    model.opset_import[0].version = 99
    return model


def lppool_between() -> onnx.ModelProto:
    return cnn([helper.make_node("LpPool", ["a1"], ["p"], kernel_shape=[1, 1], name="the_lppool")])


def random_between() -> onnx.ModelProto:
    """Noise added between the neurons: a random op, which no mean over steps stands for."""
    return cnn(
        [
            helper.make_node("RandomNormalLike", ["a1"], ["noise"], name="the_noise", scale=0.1),
            helper.make_node("Add", ["a1", "noise"], ["p"]),
        ]
    )


def training_batchnorm() -> onnx.ModelProto:
    c = 4
    nodes = [
        helper.make_node(
            "BatchNormalization",
            ["a1", "g", "b", "m", "v"],
            ["n", "rm", "rv"],
            training_mode=1,
            name="bn_train",
        )
    ]
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    return cnn(nodes, g=ones, b=zeros, m=zeros, v=ones)


def named_like_generated() -> onnx.ModelProto:
    """Tensor names the compiler also generates: ``h1@1``, ``a1.sum``, ``y_per_step``."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h1@1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1@1"], ["a1.sum"]),
        helper.make_node("Flatten", ["a1.sum"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
        helper.make_node("Mul", ["y", "two"], ["y_per_step"]),
    ]
    graph = helper.make_graph(
        nodes,
        "named",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("y_per_step", TensorProto.FLOAT, ["N", 10]),
        ],
        [
            numpy_helper.from_array(models._w(4, 1, 3, 3), "w1"),
            numpy_helper.from_array(models._w(10, 256), "fc"),
            numpy_helper.from_array(np.asarray(2.0, np.float32), "two"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
