"""torchvision's architectures with random weights, exported by torch's two ONNX exporters.

The index's torchvision wheel is a CUDA build: ``import torchvision`` fails beside this project's
CPU torch, because its package ``__init__`` registers compiled operators (``torchvision::nms``)
that need ``libc10_cuda.so``. Its model constructors are pure Python, so the wheel is installed
without dependencies into ``benchmarks/.cache/torchvision`` and ``torchvision.models`` is
imported under a bare package whose ``__init__`` is skipped (``models()``):

    pip install --no-deps --target benchmarks/.cache/torchvision torchvision==0.28.0

Weights: He-normal convolutions and linear layers (torchvision's own initialization leaves
MobileNetV2's output independent of its input: its image-dependent variance shrinks ~10× per
stage), BatchNorm scales in [0.5, 1.5] and biases ~N(0, 0.2), then BatchNorm running statistics
from four train-mode passes over smooth random images — the network a few steps into training.
"""

from __future__ import annotations

import importlib.machinery
import io
import sys
import types
import warnings

import numpy as np
import onnx
from _common import CACHE, smooth_images

TORCHVISION = CACHE / "torchvision"


def models() -> types.ModuleType:
    """``torchvision.models`` without torchvision's compiled operators."""
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision.models"]
    if not (TORCHVISION / "torchvision").is_dir():
        raise SystemExit(f"torchvision is not installed in {TORCHVISION}; see {__file__}'s docstring")
    package = types.ModuleType("torchvision")
    package.__path__ = [str(TORCHVISION / "torchvision")]
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    package.__spec__.submodule_search_locations = package.__path__
    sys.modules["torchvision"] = package
    import torchvision.models

    return torchvision.models


def build(name: str, size: int, seed: int = 0, exact_bn: bool = False, **kwargs: object):
    """``torchvision.models.<name>`` with random weights and BN statistics, in eval mode.

    By default the statistics are what four train-mode passes leave with torch's momentum of 0.1:
    two thirds of each BN's running mean and variance are still their initial 0 and 1.
    ``exact_bn``: the exact statistics of those passes (a cumulative average), as a trained
    network's BNs hold them — which changes how fast a deep SNN converges (docs/method.md §10)."""
    import torch

    torch.manual_seed(seed)
    net = getattr(models(), name)(**kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * np.sqrt(2 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.2)
                if exact_bn:
                    m.momentum = None  # a cumulative average of the passes' batch statistics
        net.train()
        for k in range(4):
            net(torch.from_numpy(smooth_images(32, size, seed=1000 + k)))
    return net.eval()


def export(net, size: int, dynamo: bool) -> onnx.ModelProto:
    """The ONNX export of ``net`` for ``[N, 3, size, size]`` inputs (dynamic batch)."""
    import torch

    x = torch.from_numpy(smooth_images(1, size, seed=0))
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
        buffer = io.BytesIO()
        torch.onnx.export(
            net,
            (x,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N"}},
        )
    return onnx.load_from_string(buffer.getvalue())
