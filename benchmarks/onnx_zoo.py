"""The nine ONNX model-zoo graphs that ship inside the ``onnx`` package, with random weights.

``onnx/backend/test/data/light/light_*.onnx`` are the zoo's opset-9, IR-version-3 graphs
(AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet-512)
with every weight a ``ConstantOfShape`` fill. Here each fill becomes a seeded random initializer,
kept in IR 3's form (listed among the graph inputs as well): He-normal convolution and Gemm
weights, small biases, BatchNorm scales in [0.5, 1.5], and BatchNorm mean and variance measured
on smooth random images, layer by layer in depth order (each BN normalizes what its input
really is once the BNs before it are set), as a trained network's would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from _common import CACHE, smooth_images
from onnx import helper, numpy_helper

LIGHT = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"
NAMES = tuple(sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx")))
SIZE = 224


def randomized(name: str, seed: int = 0, cache: bool = True) -> onnx.ModelProto:
    """The zoo graph ``name`` with random weights and measured BN statistics (cached in
    benchmarks/.cache unless ``cache`` is false)."""
    cached = CACHE / "onnx_zoo" / f"{name}.seed{seed}.onnx"
    if cache and cached.exists():
        return onnx.load(cached)
    model = onnx.load(LIGHT / f"light_{name}.onnx")
    graph = model.graph
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, tuple[onnx.NodeProto, int]] = {}
    for node in graph.node:
        for index, tensor in enumerate(node.input):
            consumers.setdefault(tensor, (node, index))
    kept, weights = [], []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        consumer, index = consumers[node.output[0]]
        weights.append(numpy_helper.from_array(_weight(rng, consumer.op_type, index, shape), node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    initializers = [t for t in graph.initializer if t.name in used] + weights
    inputs = [i for i in graph.input if i.name in used]
    del graph.initializer[:], graph.input[:]
    graph.initializer.extend(initializers)
    graph.input.extend(inputs)
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    onnx.checker.check_model(model)
    _measure_batchnorm(model)
    if cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, cached)
    return model


def _weight(rng: np.random.Generator, op: str, index: int, shape: tuple[int, ...]) -> np.ndarray:
    if op in ("Conv", "Gemm") and index == 1:
        fan_in = int(np.prod(shape[1:]))
        value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif op == "BatchNormalization":
        value = {
            1: rng.uniform(0.5, 1.5, shape),
            2: rng.normal(0, 0.2, shape),
            3: np.zeros(shape),
            4: np.ones(shape),
        }[index]
    else:
        value = rng.normal(0, 0.1, shape)
    return value.astype(np.float32)


def _measure_batchnorm(model: onnx.ModelProto, images: int = 8) -> None:
    """Set every BN's mean and variance to its input's statistics, in order of BN depth."""
    from icsnn_onnx.runtime.instrument import expose

    graph = model.graph
    values = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    depth: dict[str, int] = {}

    def bn_depth(tensor: str) -> int:
        if tensor in depth:
            return depth[tensor]
        stack, order = [tensor], []
        while stack:  # iterative: DenseNet's graphs are deep
            t = stack.pop()
            if t in depth or t not in producer:
                continue
            order.append(t)
            stack.extend(i for i in producer[t].input if i not in depth)
        for t in reversed(order):
            node = producer[t]
            below = max((depth.get(i, 0) for i in node.input), default=0)
            depth[t] = below + (node.op_type == "BatchNormalization")
        return depth.get(tensor, 0)

    bns = [n for n in graph.node if n.op_type == "BatchNormalization"]
    levels: dict[int, list[onnx.NodeProto]] = {}
    for bn in bns:
        levels.setdefault(bn_depth(bn.input[0]), []).append(bn)
    x = smooth_images(images, SIZE, seed=2000)
    for level in sorted(levels):
        nodes = levels[level]
        outputs = run_all(expose(model, [bn.input[0] for bn in nodes]), x)
        for bn, value in zip(nodes, outputs, strict=True):
            axes = (0, *range(2, value.ndim))
            for index, stat in ((3, value.mean(axis=axes)), (4, value.var(axis=axes) + 1e-3)):
                values[bn.input[index]].CopyFrom(
                    numpy_helper.from_array(stat.astype(np.float32), bn.input[index])
                )


def run_all(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """Every output of ``model`` over ``x``, one image at a time (the zoo graphs' batch is 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: x[i : i + 1]}) for i in range(len(x))]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
