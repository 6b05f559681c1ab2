"""Small models built by different tools, for the tests (no downloads, no ../shared)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(1234)


def _w(*shape: int, scale: float | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    scale = scale if scale is not None else np.sqrt(2.0 / fan_in)
    return ((rng or RNG).standard_normal(shape) * scale).astype(np.float32)


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def make_model(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    input_shape: list,
    output_shape: list,
    opset: int = 21,
    inits_as_inputs: bool = False,
    input_name: str = "x",
    output_name: str = "y",
) -> onnx.ModelProto:
    """A single-input single-output model from raw nodes (onnx.helper)."""
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)]
    if inits_as_inputs:  # opset <= 9 exporters list weights among the graph inputs
        inputs += [
            helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inits.items()
        ]
    graph = helper.make_graph(
        nodes,
        "test",
        inputs,
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, output_shape)],
        initializers,
    )
    ir = 4 if opset <= 9 else helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    onnx.checker.check_model(model)
    return model


def mlp_opset9() -> onnx.ModelProto:
    """64 → 48 → 32 → 10 MLP, opset 9 style: Gemm, Relu, weights listed as inputs."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], transB=1),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("Gemm", ["a2", "w3", "b3"], ["y"], transB=1),
    ]
    rng = np.random.default_rng(9)  # its own weights, whichever tests ran before
    inits = {
        "w1": _w(48, 64, rng=rng),
        "b1": _w(48, scale=0.1, rng=rng),
        "w2": _w(32, 48, rng=rng),
        "b2": _w(32, scale=0.1, rng=rng),
        "w3": _w(10, 32, rng=rng),
        "b3": _w(10, scale=0.1, rng=rng),
    }
    return make_model(nodes, inits, ["N", 64], ["N", 10], opset=9, inits_as_inputs=True)


def _bn(prefix: str, c: int) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_g": RNG.uniform(0.5, 1.5, c).astype(np.float32),
        f"{prefix}_b": RNG.uniform(-0.2, 0.2, c).astype(np.float32),
        f"{prefix}_m": RNG.uniform(-0.3, 0.3, c).astype(np.float32),
        f"{prefix}_v": RNG.uniform(0.5, 2.0, c).astype(np.float32),
    }


def _bn_node(x: str, y: str, prefix: str) -> onnx.NodeProto:
    return helper.make_node(
        "BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [y]
    )


def cnn_bn(opset: int = 21) -> onnx.ModelProto:
    """Conv-BN-ReLU ×2 with AveragePool, Flatten, Gemm; input [N,1,8,8]."""
    nodes = [
        helper.make_node("Conv", ["x", "c1", "c1b"], ["h1"], pads=[1, 1, 1, 1]),
        _bn_node("h1", "n1", "bn1"),
        helper.make_node("Relu", ["n1"], ["a1"]),
        helper.make_node("AveragePool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2"], ["h2"], pads=[1, 1, 1, 1]),
        _bn_node("h2", "n2", "bn2"),
        helper.make_node("Relu", ["n2"], ["a2"]),
        helper.make_node("Flatten", ["a2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1),
    ]
    inits = {
        "c1": _w(8, 1, 3, 3),
        "c1b": _w(8, scale=0.1),
        "c2": _w(16, 8, 3, 3),
        "fc": _w(10, 16 * 4 * 4),
        "fcb": _w(10, scale=0.1),
        **_bn("bn1", 8),
        **_bn("bn2", 16),
    }
    return make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10], opset=opset)


def residual_block() -> onnx.ModelProto:
    """Conv-ReLU, then a residual block: a + Conv(ReLU(Conv(a))), ReLU, GlobalAveragePool, MatMul+Add."""
    nodes = [
        helper.make_node("Conv", ["x", "c0"], ["h0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h0"], ["a0"]),
        helper.make_node("Conv", ["a0", "c1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Conv", ["a1", "c2"], ["h2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a0", "h2"], ["s"]),
        helper.make_node("Relu", ["s"], ["a2"]),
        helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["m"]),
        helper.make_node("Add", ["m", "fcb"], ["y"]),
    ]
    inits = {
        "c0": _w(8, 1, 3, 3),
        "c1": _w(8, 8, 3, 3),
        "c2": _w(8, 8, 3, 3, scale=0.2),
        "fc": _w(8, 10),
        "fcb": _w(10, scale=0.1),
    }
    return make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10])


def concat_block() -> onnx.ModelProto:
    """Two ReLU branches concatenated on channels (an Inception/DenseNet-style block)."""
    nodes = [
        helper.make_node("Conv", ["x", "c0"], ["h0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h0"], ["a0"]),
        helper.make_node("Conv", ["a0", "c1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Conv", ["a0", "c2"], ["h2"]),
        helper.make_node("Clip", ["h2", "zero", "six"], ["a2"]),
        helper.make_node("Concat", ["a0", "a1", "a2"], ["cat"], axis=1),
        helper.make_node("AveragePool", ["cat"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = {
        "c0": _w(6, 1, 3, 3),
        "c1": _w(6, 6, 3, 3),
        "c2": _w(4, 6, 1, 1),
        "fc": _w(10, 16 * 2 * 2),
        "zero": np.zeros((), np.float32),
        "six": np.full((), 6.0, np.float32),
    }
    return make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10])


def routes_net() -> onnx.ModelProto:
    """Spikes through every kind of route: an overlapping, padded AveragePool into a strided
    Conv; a residual Add straight into a membrane; Flatten and Concat into a Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["z1"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node(
            "AveragePool", ["a1"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Conv", ["p", "c2"], ["z2"], strides=[2, 2], pads=[1, 1, 1, 1], name="c2"),
        helper.make_node("Relu", ["z2"], ["a2"]),
        helper.make_node("Conv", ["a1", "c3"], ["z3"], pads=[1, 1, 1, 1], name="c3"),
        helper.make_node("Add", ["z3", "a1"], ["s3"]),
        helper.make_node("Relu", ["s3"], ["a3"]),
        helper.make_node("Conv", ["a3", "c4"], ["z4"], strides=[2, 2], name="c4"),
        helper.make_node("Relu", ["z4"], ["a4"]),
        helper.make_node("Flatten", ["a2"], ["f2"]),
        helper.make_node("Flatten", ["a4"], ["f4"]),
        helper.make_node("Concat", ["f2", "f4"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "g1"], ["z5"], transB=1, name="g1"),
        helper.make_node("Relu", ["z5"], ["a5"]),
        helper.make_node("Gemm", ["a5", "g2"], ["y"], transB=1, name="g2"),
    ]
    weights = {
        "c1": _w(4, 1, 3, 3),
        "c2": _w(6, 4, 3, 3),
        "c3": _w(4, 4, 3, 3),
        "c4": _w(2, 4, 2, 2),
        "g1": _w(16, 24 + 32),
        "g2": _w(10, 16),
    }
    return make_model(nodes, weights, ["N", 1, 8, 8], ["N", 10])


def maxpool_cnn() -> onnx.ModelProto:
    """Conv-ReLU-MaxPool(2)-Conv-ReLU-Flatten-Gemm: MaxPool decomposed into strided Slices."""
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["z1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("MaxPool", ["a1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "c2"], ["z2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z2"], ["a2"]),
        helper.make_node("Flatten", ["a2"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    weights = {"c1": _w(4, 1, 3, 3), "c2": _w(6, 4, 3, 3), "g": _w(10, 6 * 4 * 4)}
    return make_model(nodes, weights, ["N", 1, 8, 8], ["N", 10])


def standalone_bn() -> onnx.ModelProto:
    """BN directly on the input (no producer to fold into) and a pre-activation BN after a Concat."""
    nodes = [
        _bn_node("x", "n0", "bn0"),
        helper.make_node("Flatten", ["n0"], ["f0"]),
        helper.make_node("Gemm", ["f0", "w1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Concat", ["a1", "h1"], ["cat"], axis=1),
        _bn_node("cat", "n2", "bn2"),
        helper.make_node("Relu", ["n2"], ["a2"]),
        helper.make_node("Gemm", ["a2", "w2"], ["y"], transB=1),
    ]
    inits = {"w1": _w(24, 64), "w2": _w(10, 48), **_bn("bn0", 1), **_bn("bn2", 48)}
    return make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10])


def torch_cnn():
    """A torch CNN with BatchNorm, ReLU, AvgPool and a Linear head (random weights, eval mode)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU6(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, 10),
    )
    with torch.no_grad():
        for m in net:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def torch_export(net, example: np.ndarray, dynamo: bool) -> onnx.ModelProto:
    import torch

    buffer = io.BytesIO()
    x = torch.from_numpy(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(
                net,
                (x,),
                dynamo=True,
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes=({0: torch.export.Dim("N", min=1)},),
                verbose=False,
            )
            return program.model_proto
        torch.onnx.export(
            net,
            (x,),
            buffer,
            dynamo=False,
            opset_version=13,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N"}},
            do_constant_folding=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def sklearn_mlp(x: np.ndarray, y: np.ndarray) -> onnx.ModelProto:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier((32, 16), max_iter=200, random_state=0).fit(x, y)
    return to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17)


def linear_zoo() -> onnx.ModelProto:
    """Every kind of linear op between two spiking layers: Split, Slice, Transpose, Reshape,
    Pad, ReduceMean/ReduceSum, Squeeze/Unsqueeze, Sub/Div by constants, Concat, residual Sub."""
    nodes = [
        helper.make_node("Conv", ["x", "c0"], ["h0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h0"], ["a0"]),  # [N, 8, 8, 8]
        helper.make_node("Split", ["a0", "split"], ["s1", "s2"], axis=1),  # 2 × [N, 4, 8, 8]
        helper.make_node("Slice", ["s1", "starts", "ends", "axes"], ["sl"]),  # [N, 4, 6, 8]
        helper.make_node("Pad", ["sl", "pads"], ["pd"], mode="constant"),  # [N, 4, 8, 8]
        helper.make_node("Transpose", ["s2"], ["tr"], perm=[0, 1, 3, 2]),
        helper.make_node("Sub", ["pd", "tr"], ["df"]),  # difference of two spiking streams
        helper.make_node("Div", ["df", "two"], ["dv"]),
        helper.make_node("ReduceMean", ["dv", "rm_axes"], ["rm"], keepdims=1),  # [N, 4, 8, 1]
        helper.make_node("Squeeze", ["rm", "sq_axes"], ["sq"]),  # [N, 4, 8]
        helper.make_node("Unsqueeze", ["sq", "sq_axes"], ["us"]),  # [N, 4, 8, 1]
        helper.make_node("ReduceSum", ["s2", "rs_axes"], ["rs"], keepdims=1),  # [N, 4, 8, 1]
        helper.make_node("Concat", ["us", "rs"], ["cat"], axis=1),  # [N, 8, 8, 1]
        helper.make_node("Reshape", ["cat", "shape"], ["flat"]),  # [N, 64]
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "w2"], ["y"], transB=1),
    ]
    inits = {
        "c0": _w(8, 1, 3, 3),
        "split": np.array([4, 4], np.int64),
        "starts": np.array([1], np.int64),
        "ends": np.array([7], np.int64),
        "axes": np.array([2], np.int64),
        "pads": np.array([0, 0, 1, 0, 0, 0, 1, 0], np.int64),
        "two": np.array(2.0, np.float32),
        "rm_axes": np.array([3], np.int64),
        "sq_axes": np.array([3], np.int64),
        "rs_axes": np.array([3], np.int64),
        "shape": np.array([0, -1], np.int64),
        "w1": _w(32, 64),
        "b1": _w(32, scale=0.1),
        "w2": _w(10, 32),
    }
    return make_model(nodes, inits, ["N", 1, 8, 8], ["N", 10])


def two_inputs() -> onnx.ModelProto:
    """Two inputs: an image through Conv-ReLU and a feature vector, concatenated, then an MLP."""
    nodes = [
        helper.make_node("Conv", ["image", "c0"], ["h0"], strides=[2, 2]),
        helper.make_node("Relu", ["h0"], ["a0"]),
        helper.make_node("Flatten", ["a0"], ["f0"]),
        helper.make_node("Gemm", ["features", "wf"], ["hf"], transB=1),
        helper.make_node("Relu", ["hf"], ["af"]),
        helper.make_node("Concat", ["f0", "af"], ["cat"], axis=1),
        helper.make_node("Gemm", ["cat", "w"], ["y"], transB=1),
    ]
    inits = {"c0": _w(4, 1, 3, 3), "wf": _w(8, 5), "w": _w(10, 4 * 9 + 8)}
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def torch_densenet_block():
    """A DenseNet-style block: a stem Conv, then two pre-activation layers (BN → ReLU → 1×1 Conv
    → BN → ReLU → 3×3 Conv) each concatenating its output to its input, a transition (BN → ReLU
    → 1×1 Conv → AvgPool) and a BN → ReLU → global-average head. The BNs before each ReLU have
    no convolution before them to fold into (they follow a Concat)."""
    import torch
    from torch import nn

    class Dense(nn.Module):
        def __init__(self, cin: int, growth: int) -> None:
            super().__init__()
            self.f = nn.Sequential(
                nn.BatchNorm2d(cin),
                nn.ReLU(),
                nn.Conv2d(cin, 2 * growth, 1, bias=False),
                nn.BatchNorm2d(2 * growth),
                nn.ReLU(),
                nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False),
            )

        def forward(self, x):
            return torch.cat([x, self.f(x)], 1)

    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        Dense(8, 4),
        Dense(12, 4),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 8, 1, bias=False),
        nn.AvgPool2d(2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    return _with_random_bn(net).eval()


def torch_inverted_residual():
    """A MobileNetV2-style net: stem Conv-BN-ReLU6, then inverted residuals (1×1 expand → BN →
    ReLU6 → 3×3 depthwise → BN → ReLU6 → 1×1 linear projection → BN, plus the input when the
    shapes allow), a 1×1 Conv-BN-ReLU6 and a global-average head."""
    from torch import nn

    class Inverted(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
            super().__init__()
            hidden = cin * expand
            self.residual = stride == 1 and cin == cout
            self.f = nn.Sequential(
                nn.Conv2d(cin, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
                nn.Conv2d(hidden, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )

        def forward(self, x):
            return x + self.f(x) if self.residual else self.f(x)

    import torch

    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        Inverted(8, 8, 1),
        Inverted(8, 12, 2),
        Inverted(12, 12, 1),
        nn.Conv2d(12, 16, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    return _with_random_bn(net).eval()


def _with_random_bn(net):
    """BN statistics of the digits a few train-mode passes would give, on noise-free random input."""
    import torch

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        net.train()
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            net(torch.rand(64, 1, 8, 8, generator=g))
    return net
