"""Where `--threshold auto` switches: mse vs the 99.99th percentile vs max, per T, on held-out data.

The evidence behind the old `auto` (mse up to T=16; mse at every T since, docs/method.md §13): the ReLU and MaxPool CNNs of
benchmarks/mnist_fidelity.py (same seeded training, same 2,000 calibration images), converted
with `--init half` and coding compensation for each T in 1..128 with each layer-wise threshold
method, accuracy on the 2,500 held-out training images (never the test set) with a bare ONNX
Runtime session. Reuses the fidelity benchmark's trained ANNs from benchmarks/.cache when they
are there, else trains them (≤ 3 min each).

    pip install -e ".[bench]"
    python benchmarks/threshold_auto.py      # ~10 min on 2 CPU cores with the cached ANNs

Writes benchmarks/results/threshold_auto.{json,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, plain_accuracy, save_json

NETS = ("relu_avgpool", "relu_maxpool")
METHODS = ("mse", "p99.99", "max")
TS = (1, 2, 4, 8, 16, 32, 64, 128)


def main() -> None:
    import mnist_nets as nets
    import torch
    import zoo
    from mnist_data import load_mnist

    import icsnn_onnx

    torch.set_num_threads(2)
    train_x, train_y, _, _ = load_mnist()
    (fit_x, fit_y), held_out, calib = nets.split(train_x, train_y)
    report: dict = {
        "benchmark": "threshold_auto",
        "setting": "init half, compensation, layer-wise thresholds, direct coding",
        "split": f"the last {nets.HELD_OUT} MNIST training images (held out from training)",
        "auto_mse_max_T": 16,  # --threshold auto when this was measured (mse at every T since)
        "T": list(TS),
        "nets": {},
    }
    for net in NETS:
        ann = CACHE / f"mnist_{net}.onnx"
        if not ann.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            model, _ = nets.train(net, fit_x, fit_y)
            zoo.export(model, fit_x.shape[1:], str(ann))
        entry = {}
        for method in METHODS:
            entry[method] = {
                str(T): float(
                    plain_accuracy(
                        icsnn_onnx.convert(ann, calib, T=T, threshold=method),
                        *held_out,
                        ["logits"],
                        "image",
                        2,
                    )[0][0]
                )
                for T in TS
            }
            print(net, method, " ".join(f"{100 * a:.2f}" for a in entry[method].values()), flush=True)
        report["nets"][net] = entry
    save_json(RESULTS / "threshold_auto.json", report)
    plot(report, RESULTS / "threshold_auto.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["nets"]), figsize=(10, 3.8), dpi=110, squeeze=False)
    for ax, (net, entry) in zip(axes[0], report["nets"].items(), strict=True):
        for method, style in zip(entry, ("-o", "-s", "-^"), strict=True):
            ax.plot(report["T"], [100 * a for a in entry[method].values()], style, ms=4, label=method)
        ax.axvline(report["auto_mse_max_T"], color="k", lw=0.8, ls=":", label="auto: mse up to here")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 100)
        ax.set_xlabel("time steps T")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(f"{net}, --init half")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    main()
