"""What the real-architecture benchmarks share: paths, inputs, the centred head, error measures.

Random-weight networks from every source (torchvision, Keras, the ONNX model zoo) are measured
the same way:

- inputs are smooth random images (a low-resolution random image upsampled, plus a little noise),
  normalized like ImageNet inputs, seeded;
- the network's output is *centred*: a final Softmax is dropped (its logits are compared) and the
  mean logits over the statistics images are subtracted (a constant bias shift, which an SNN
  applies exactly on its read-out). A random deep network's logits are mostly a constant vector
  shared by every input (the input-dependent part of ResNet-50's is ~5% of it); without the shift
  every input gets the same top-1 class and a relative error says mostly how well that constant
  is reproduced. Centred, predictions vary with the input and the relative error measures the
  part that does. Both errors are reported: of the raw logits, ‖y_snn − y_ann‖/‖y_ann‖, and of
  the centred ones (the SNN's centred output is its raw one minus the same constant, exactly).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"

#: The timing benchmarks' conversion settings: θ/2 and layer-wise thresholds, the defaults when
#: their committed figures were measured. Speed does not depend on v(0)'s values, and θ/2 skips
#: Alg 2's calibration, which the default `--init auto` would run for every compiled model.
TIMED = {"init": "half", "channel_wise": False}


def smooth_images(n: int, size: int, seed: int, channels: int = 3, layout: str = "NCHW") -> np.ndarray:
    """``n`` seeded smooth random images ``[n, channels, size, size]`` (or NHWC), ~N(0, 1)-scaled."""
    rng = np.random.default_rng(seed)
    low = rng.random((n, channels, max(size // 8, 1), max(size // 8, 1)))
    # bilinear-ish upsampling by repetition and a box blur keeps this numpy-only
    up = np.repeat(np.repeat(low, 8, axis=2), 8, axis=3)[:, :, :size, :size]
    kernel = 5
    padded = np.pad(up, ((0, 0), (0, 0), (kernel // 2,) * 2, (kernel // 2,) * 2), mode="edge")
    blurred = sum(padded[:, :, i : i + size, j : j + size] for i in range(kernel) for j in range(kernel)) / (
        kernel * kernel
    )
    images = ((blurred + 0.1 * rng.standard_normal(blurred.shape)) - 0.45) / 0.25
    images = images.astype(np.float32)
    return images.transpose(0, 2, 3, 1).copy() if layout == "NHWC" else images


def run(model: onnx.ModelProto, x: np.ndarray, batch: int | None = None) -> np.ndarray:
    """The model's first output on ``x`` (plain ONNX Runtime, CPU), in batches of ``batch``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    size = batch or len(x)
    return np.concatenate([session.run(None, {name: x[i : i + size]})[0] for i in range(0, len(x), size)])


def centred(
    model: onnx.ModelProto, stats: np.ndarray, batch: int | None = None
) -> tuple[onnx.ModelProto, np.ndarray]:
    """``model`` without a final Softmax, its first output minus its mean over ``stats``; and
    that mean (add it back for the raw logits)."""
    model = _copy(model)
    graph = model.graph
    out = graph.output[0]
    last = next((n for n in graph.node if out.name in n.output), None)
    if last is not None and last.op_type == "Softmax":
        out.name = last.input[0]
        graph.node.remove(last)
    mean = run(model, stats, batch).mean(axis=0, keepdims=True).astype(np.float32)
    logits = out.name
    out.name = f"{logits}.centred"
    graph.initializer.append(numpy_helper.from_array(mean, f"{logits}.mean"))
    if model.ir_version < 4:  # IR 3 lists every initializer among the inputs
        graph.input.append(
            helper.make_tensor_value_info(f"{logits}.mean", onnx.TensorProto.FLOAT, list(mean.shape))
        )
    graph.node.append(
        helper.make_node("Sub", [logits, f"{logits}.mean"], [out.name], name=f"{logits}.centre")
    )
    return model, mean


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def agreement(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(got.reshape(len(got), -1).argmax(1) == ref.reshape(len(ref), -1).argmax(1)))


def net_axes(count: int, width: float = 5.0) -> tuple:
    """A figure with one accuracy panel per network (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(width * count, 4.0), dpi=110, squeeze=False)
    return fig, axes[0]


def save_json(path: Path, record: dict) -> None:
    """A benchmark's record, as every script writes it (indented, a final newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def write_json(path: Path, record: dict) -> None:
    """:func:`save_json` with the machine it was measured on."""
    save_json(path, {"machine": {"python": platform.python_version(), "cpu": platform.processor()}, **record})


def plain_accuracy(
    model: str | Path | onnx.ModelProto,
    x: np.ndarray,
    y: np.ndarray,
    outputs: list[str],
    input_name: str,
    threads: int | None = None,
    batch: int = 500,
) -> list[np.ndarray]:
    """Accuracy of each output with a bare ONNX Runtime session (as a user's deployment runs the
    file), in one pass over the data; per step for an output of shape ``[T, N, C]``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    correct: list = [0] * len(outputs)
    for start in range(0, len(x), batch):
        results = session.run(outputs, {input_name: x[start : start + batch]})
        for i, out in enumerate(results):
            correct[i] = correct[i] + (out.argmax(-1) == y[start : start + batch]).sum(-1)
    return [np.atleast_1d(c / len(x)) for c in correct]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
