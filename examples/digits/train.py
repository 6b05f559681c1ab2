"""Train the small CNN shipped in this folder and export it to ONNX.

Data: scikit-learn's bundled digits (8×8 grey images, no download). Regenerates
``digits_cnn.onnx``, ``calib.npz`` (256 training images) and ``test.npz`` (540 held-out images,
with labels). Needs torch and scikit-learn (``pip install -e ".[test]"``); takes a few seconds.

    python examples/digits/train.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 0


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def main() -> None:
    torch.manual_seed(SEED)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    order = np.random.default_rng(SEED).permutation(len(x))
    train, test = order[:1257], order[1257:]
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for _ in range(40):
        model.train()
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x[test])).argmax(1).numpy() == y[test]).mean()
    print(f"test accuracy {100 * acc:.2f}%")
    torch.onnx.export(
        model,
        (xt[:1],),
        HERE / "digits_cnn.onnx",
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
    )
    np.savez_compressed(HERE / "calib.npz", x=x[train][:256])
    np.savez_compressed(HERE / "test.npz", x=x[test], y=y[test].astype(np.int64))


if __name__ == "__main__":
    main()
