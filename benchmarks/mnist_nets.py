"""The MNIST networks of the fidelity benchmarks (mnist_fidelity.py, threshold_auto.py): their
architecture, seeded training and the split every choice is made on.

Three 3-convolution CNNs (``relu_avgpool``, ``qcfs_avgpool``, ``relu_maxpool``) and three deeper
nets built the way their families are (``resnet``, ``vgg``, ``mobilenet``), on which the defaults
were chosen (docs/method.md §13)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import zoo
from torch import nn

SEED = 0
HELD_OUT = 2500  # the last training images, kept out of training: every choice is made on them
CALIB_SAMPLES = 2000
EPOCHS = 3


class GradFloor(torch.autograd.Function):
    """floor with a straight-through gradient (QCFS training)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class QCFS(nn.Module):
    """Quantization-clip-floor-shift: λ/L · clip(floor(x·L/λ + 1/2), 0, L), λ trainable."""

    def __init__(self, levels: int = 4, lam: float = 2.0) -> None:
        super().__init__()
        self.levels = levels
        self.lam = nn.Parameter(torch.tensor(lam))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x / self.lam
        floor = GradFloor.apply if self.training else torch.floor  # plain ops when exported
        y = floor(y * self.levels + 0.5) / self.levels
        return torch.clamp(y, 0, 1) * self.lam


class STEQCFS(QCFS):
    """QCFS as quantization-aware training code writes it, with a straight-through estimator:
    ``λ·(x_c + (q(x_c) − x_c).detach())``, ``x_c = clamp(x/λ, 0, 1)``. The same function as
    :class:`QCFS` (clamping before or after the rounding gives the same levels), exported as a DAG
    (``x_c`` read twice) instead of a chain: the twin ``ste_avgpool`` takes qcfs_avgpool's weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = torch.clamp(x / self.lam, 0, 1)
        q = torch.floor(xc * self.levels + 0.5) / self.levels
        return (xc + (q - xc).detach()) * self.lam


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 convolutions and a residual Add; a strided 1×1 convolution
    on the shortcut where the shape changes (a downsampling shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), act(), *conv_bn(cout, cout))
        self.shortcut = (
            nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()
        )
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expansion, 3×3 depthwise, linear 1×1 projection (ReLU6 after the
    first two), a residual Add where the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: type[nn.Module]) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            *conv_bn(cin, hidden, 1), act(), *conv_bn(hidden, hidden, 3, stride, groups=hidden), act(),
            *conv_bn(hidden, cout, 1),
        )  # fmt: skip
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def resnet(act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """9 convolutions: a stem, three basic blocks (16, 32, 64 channels; the last two downsample
    through strided 1×1 shortcuts), global average pool, linear."""
    return nn.Sequential(
        *conv_bn(1, 16), act(), BasicBlock(16, 16, 1, act), BasicBlock(16, 32, 2, act),
        BasicBlock(32, 64, 2, act), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def vgg(act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """7 convolutions (16, 16, M, 32, 32, M, 64, 64, 64), two MaxPools, global average pool."""
    layers: list[nn.Module] = []
    channels = 1
    for v in (16, 16, "M", 32, 32, "M", 64, 64, 64):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [*conv_bn(channels, int(v)), act()]
            channels = int(v)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def mobilenet(act: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
    """A strided stem, five inverted residuals (expansion 4; 16, 24, 24, 32, 32 channels, two of them
    strided, three with residual Adds), a 1×1 convolution to 128, global average pool, linear."""
    blocks = [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2), (32, 32, 1)]
    return nn.Sequential(
        *conv_bn(1, 16, 3, 2), act(), *(InvertedResidual(i, o, s, 4, act) for i, o, s in blocks),
        *conv_bn(32, 128, 1), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip


DEEP = {"resnet": resnet, "vgg": vgg, "mobilenet": mobilenet}


def build(net: str, relu: bool = False) -> nn.Sequential:
    """``net``'s architecture; ``relu``: with nn.ReLU for its activations (SpikingJelly's
    converter replaces only those), so a twin takes the trained weights."""
    if net in DEEP:
        return DEEP[net](nn.ReLU) if relu else DEEP[net]()
    quantizer = {"qcfs_avgpool": QCFS, "ste_avgpool": STEQCFS}.get(net)
    act = quantizer if quantizer is not None and not relu else nn.ReLU
    pool = (lambda: nn.MaxPool2d(2)) if net == "relu_maxpool" else (lambda: nn.AvgPool2d(2))
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(3):
        layers += [nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), act(), pool()]
        channels = 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 3 * 3, 10))


def split(train_x: np.ndarray, train_y: np.ndarray) -> tuple[tuple, tuple, np.ndarray]:
    """The training split every choice is made on: ``(fit_x, fit_y)``, the held-out ``(x, y)``
    (the last HELD_OUT training images) and CALIB_SAMPLES calibration images drawn (seeded)
    from the fit part."""
    fit = (train_x[:-HELD_OUT], train_y[:-HELD_OUT])
    held_out = (train_x[-HELD_OUT:], train_y[-HELD_OUT:])
    calib = fit[0][np.random.default_rng(SEED).choice(len(fit[0]), CALIB_SAMPLES, replace=False)]
    return fit, held_out, calib


def train(net: str, x: np.ndarray, y: np.ndarray, cache: Path | None = None) -> tuple[nn.Sequential, float]:
    """The seeded model and its training seconds; with ``cache``, the weights a previous run
    trained on the same split are reused, so later runs (``--trace``, ``--only-defaults``) measure
    the same weights: seeded training gives other weights on another CPU."""
    torch.manual_seed(SEED)
    model = build(net)
    saved = cache / f"mnist_{net}_e{EPOCHS}_s{SEED}_n{len(x)}.pt" if cache else None
    if saved is not None and saved.exists():
        state = torch.load(saved)
        model.load_state_dict(state["weights"])
        return model.eval(), state["train_seconds"]
    start = time.perf_counter()
    model = zoo.fit_classifier(model, x, y, EPOCHS, SEED)
    seconds = time.perf_counter() - start
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": model.state_dict(), "train_seconds": seconds}, saved)
    return model, seconds
