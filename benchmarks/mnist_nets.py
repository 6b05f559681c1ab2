"""The MNIST CNNs of the fidelity benchmarks (mnist_fidelity.py, threshold_auto.py): their
architecture, seeded training and the split every choice is made on."""

from __future__ import annotations

import time

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


def build(net: str) -> nn.Sequential:
    act = (lambda: QCFS()) if net == "qcfs_avgpool" else nn.ReLU
    pool = (lambda: nn.MaxPool2d(2)) if net == "relu_maxpool" else (lambda: nn.AvgPool2d(2))
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(3):
        layers += [nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), act(), pool()]
        channels = 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 3 * 3, 10))


def train(net: str, x: np.ndarray, y: np.ndarray) -> tuple[nn.Sequential, float]:
    torch.manual_seed(SEED)
    model = build(net)
    start = time.perf_counter()
    model = zoo.fit_classifier(model, x, y, EPOCHS, SEED)
    return model, time.perf_counter() - start
