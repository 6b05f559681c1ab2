"""Keras applications with random weights, exported to ONNX by tf2onnx (a third exporter).

Runs in an environment of its own (TensorFlow and torch do not share one well):

    python -m venv .tfvenv && .tfvenv/bin/pip install tensorflow-cpu tf2onnx
    .tfvenv/bin/python benchmarks/keras_export.py      # ~2 min; writes benchmarks/.cache/keras/

Weights as in torchvision_zoo.py: He-normal kernels, BatchNorm scales in [0.5, 1.5] and biases
~N(0, 0.2), moving statistics from one train-mode pass over smooth random images (momentum 0,
so they are that pass's batch statistics). Logits, not probabilities (``classifier_activation=None``);
inputs NHWC, as Keras defines them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, smooth_images

OUT = CACHE / "keras"
#: name → (keras.applications constructor, input size)
MODELS = {
    "ResNet50": ("ResNet50", 64),
    "MobileNetV2": ("MobileNetV2", 64),
    "DenseNet121": ("DenseNet121", 64),
    "VGG16": ("VGG16", 64),
    "InceptionV3": ("InceptionV3", 96),
    "EfficientNetB0": ("EfficientNetB0", 64),
}


def build(constructor: str, size: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, constructor)(
        weights=None, input_shape=(size, size, 3), classifier_activation=None
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            kernel = layer.kernel
            fan_in = int(np.prod(kernel.shape[:-1]))
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                fan_in = int(np.prod(kernel.shape[:2]))
            kernel.assign(rng.standard_normal(kernel.shape).astype(np.float32) * np.sqrt(2 / fan_in))
            if layer.use_bias:
                layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
        elif isinstance(layer, keras.layers.BatchNormalization):
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.2, layer.beta.shape).astype(np.float32))
            layer.momentum = 0.0
    model(smooth_images(32, size, seed=1000, layout="NHWC"), training=True)
    return model


def main() -> None:
    import tensorflow as tf
    import tf2onnx

    OUT.mkdir(parents=True, exist_ok=True)
    for name, (constructor, size) in MODELS.items():
        model = build(constructor, size)
        spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="x"),)
        onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
        path = OUT / f"{name}.onnx"
        path.write_bytes(onnx_model.SerializeToString())
        print(f"{name}: {path} ({len(onnx_model.graph.node)} nodes, tf2onnx {tf2onnx.__version__})")


if __name__ == "__main__":
    main()
