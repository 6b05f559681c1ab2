"""Clipped activations with calibration data: θ fitted below the bound λ (the default) vs θ = λ.

On the MobileNet-style MNIST net of mnist_nets.py (ReLU6 everywhere: λ = 6), converted with the
defaults at T = 4 and 8, with the clipped sites' θ either fitted to their activations (today) or
left at λ (before docs/method.md §13), scored on the first 1,000 held-out training images.
Reuses the trained weights that ``mnist_fidelity.py --nets mobilenet`` cached in
benchmarks/.cache (trains them otherwise, ~4 min).

    python benchmarks/clip_threshold.py      # ~3 min on 2 CPU cores

Writes benchmarks/results/clip_threshold.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, plain_accuracy, save_json

SAMPLES = 1000
TS = (4, 8)


def main() -> None:
    import mnist_nets as nets
    import torch
    import zoo
    from mnist_data import load_mnist

    import icsnn_onnx
    from icsnn_onnx.passes.thresholds import NormalizeThresholds

    torch.set_num_threads(2)
    train_x, train_y, _, _ = load_mnist()
    (fit_x, fit_y), (held_x, held_y), calib = nets.split(train_x, train_y)
    x, y = held_x[:SAMPLES], held_y[:SAMPLES]
    model, _ = nets.train("mobilenet", fit_x, fit_y, CACHE)
    ann = CACHE / "clip_threshold_mobilenet.onnx"
    zoo.export(model, fit_x.shape[1:], str(ann))
    fitted = NormalizeThresholds.__dict__["_clipped_to_fit"]
    variants = {"fitted below λ (default)": fitted, "θ = λ": staticmethod(lambda program: [])}
    report: dict = {
        "benchmark": "clip_threshold",
        "net": "mobilenet (mnist_nets.py; ReLU6, λ = 6)",
        "split": f"the first {SAMPLES} of the {nets.HELD_OUT} held-out training images",
        "convert": "defaults (init auto → calibrated, mse channel-wise) but the clipped sites' θ",
        "accuracy": {},
    }
    try:
        for name, rule in variants.items():
            NormalizeThresholds._clipped_to_fit = rule  # the one rule that differs
            report["accuracy"][name] = {}
            for T in TS:
                snn = icsnn_onnx.convert(ann, calib, T=T)
                (acc,) = plain_accuracy(snn, x, y, ["logits"], "image", threads=2)
                report["accuracy"][name][T] = float(acc[0])
                print(f"{name}, T={T}: {100 * acc[0]:.2f}%", flush=True)
    finally:
        NormalizeThresholds._clipped_to_fit = fitted
    save_json(RESULTS / "clip_threshold.json", report)


if __name__ == "__main__":
    main()
