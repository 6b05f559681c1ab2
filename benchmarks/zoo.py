"""Torch helpers shared by the benchmarks: the speed-benchmark models (random weights: speed
does not need training), seeded training of a classifier, and the ONNX export."""

from __future__ import annotations

import torch
from torch import nn


def fit_classifier(model: nn.Module, x, y, epochs: int, seed: int) -> nn.Module:
    """Seeded Adam + one-cycle training with cross-entropy, batches of 128; returns ``model`` in
    eval mode. Seed torch before building ``model`` for reproducible initial weights."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=epochs * (len(x) // 128 + 1))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def vgg11_bn(num_classes: int = 10) -> nn.Module:
    """VGG-11 with BatchNorm for 3×32×32 inputs; AvgPool in place of MaxPool (convertible)."""
    layers: list[nn.Module] = []
    channels = 3
    for v in VGG11:
        if v == "M":
            layers.append(nn.AvgPool2d(2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            channels = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, num_classes))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        # ReLUs as modules, not torch.relu: SpikingJelly's converter replaces modules only.
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.b1(self.c1(x)))
        return self.relu2(self.b2(self.c2(y)) + self.short(x))


def resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 3×32×32 inputs (CIFAR stem: 3×3 conv, no max-pool)."""
    blocks: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))


def mnist_mlp(num_classes: int = 10) -> nn.Module:
    """A plain MNIST MLP, 784-512-512-10: its first layer carries most of the ANN's work, which
    the SNN runs once under direct coding (hoisted), not T times."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics so folding is exercised; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def export(model: nn.Module, shape: tuple[int, ...], path: str) -> None:
    torch.onnx.export(
        model,
        (torch.rand(2, *shape),),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
    )
