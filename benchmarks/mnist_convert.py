"""MNIST: a torch-trained ReLU CNN, converted by the CLI, run by plain ONNX Runtime.

Trains a small ReLU CNN (BatchNorm, AvgPool) on the 60k MNIST training images with torch on
the CPU (seeded; or, by default once trained, reuses the committed results/mnist_cnn.onnx that the
NIR, report and step-cost benchmarks also use), exports it with torch's ONNX exporter, converts it with the installed
``icsnn-onnx`` CLI (99.99th-percentile thresholds: ``--init half`` and ``--init zero`` with
``-T 64 --per-step``, and ``--init calibrated`` compiled for each T in 2..64, all layer-wise; and the
defaults — no option but ``-T`` — compiled for each T in 2..64), and measures
test accuracy on the 10k test images with a bare ``onnxruntime.InferenceSession`` — the
deployment path, not this project's runtime — at every T ≤ 64.

    python benchmarks/mnist_convert.py            # ~3-5 min on 2 CPU cores

Writes benchmarks/results/mnist_convert.{json,png} and the trained ANN mnist_cnn.onnx.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo
from _common import RESULTS, plain_accuracy, save_json
from mnist_data import DEFAULT_DIR, load_mnist

SEED = 0
T_MAX = 64
CALIB_SAMPLES = 2000
CALIBRATED_TS = (2, 4, 8, 16, 32, 64)  # per-compiled-T runs
PERCENTILE = ("--threshold", "p99.99", "--no-channel-wise")  # the ablation rows; "default" omits it


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 3 * 3, 10),
    )


def train(x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(SEED)
    return zoo.fit_classifier(build(), x, y, epochs, SEED)


def cli_convert(ann: Path, calib: Path, out: Path, *options: str) -> float:
    """Convert with the installed ``icsnn-onnx`` CLI, as a user would; returns the seconds taken."""
    cli = shutil.which("icsnn-onnx") or sys.exit("icsnn-onnx not on PATH: pip install -e . first")
    start = time.perf_counter()
    command = [
        cli,
        "convert",
        str(ann),
        "--calib",
        str(calib),
        *options,
        "-o",
        str(out),
        "--force",
        "--quiet",
    ]
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def accuracy(path: Path, x: np.ndarray, y: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    """Accuracy of each output with a bare ONNX Runtime session; per step for [T, N, C]."""
    return plain_accuracy(path, x, y, outputs, "image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train the ANN anew (seeded, but float results differ across CPUs) instead of converting "
        "the committed results/mnist_cnn.onnx, which other benchmarks' figures were measured on",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    RESULTS.mkdir(exist_ok=True)
    train_x, train_y, test_x, test_y = load_mnist(args.data_dir)

    ann_path = RESULTS / "mnist_cnn.onnx"
    previous = RESULTS / "mnist_convert.json"
    train_s = json.loads(previous.read_text())["train"]["seconds"] if previous.exists() else None
    if args.retrain or not ann_path.exists() or train_s is None:
        t0 = time.perf_counter()
        model = train(train_x, train_y, args.epochs)
        train_s = time.perf_counter() - t0
        zoo.export(model, train_x.shape[1:], str(ann_path))
    calib = RESULTS.parent / ".cache" / "mnist_calib.npz"
    calib.parent.mkdir(exist_ok=True)
    rng = np.random.default_rng(SEED)
    np.savez(calib, x=train_x[rng.choice(len(train_x), CALIB_SAMPLES, replace=False)])

    ann_acc = float(accuracy(ann_path, test_x, test_y, ["logits"])[0][0])
    runs = {}
    for init in ("half", "zero"):
        snn_path = RESULTS.parent / ".cache" / f"mnist_cnn.{init}.snn.onnx"
        convert_s = cli_convert(
            ann_path, calib, snn_path, "--init", init, *PERCENTILE, "-T", str(T_MAX), "--per-step"
        )
        final_acc, per_t = accuracy(snn_path, test_x, test_y, ["logits", "logits_per_step"])
        final = float(final_acc[0])
        runs[init] = {
            "convert_seconds": round(convert_s, 2),
            "accuracy_T64": final,
            "accuracy_per_T": {str(t): float(a) for t, a in enumerate(per_t, 1)},
        }
        print(
            f"init={init}: SNN T=64 {100 * final:.2f}% (ANN {100 * ann_acc:.2f}%), "
            f"T=8 {100 * per_t[7]:.2f}%, T=16 {100 * per_t[15]:.2f}%, T=32 {100 * per_t[31]:.2f}%"
        )

    # Alg 2 calibrates v(0), and the default --threshold auto (mse) fits θ, for the compiled T:
    # each T is its own conversion.
    for name, options in (("calibrated", ["--init", "calibrated", *PERCENTILE]), ("default", [])):
        per_compiled: dict = {"accuracy_at_T": {}, "convert_seconds": {}}
        for T in CALIBRATED_TS:
            snn_path = RESULTS.parent / ".cache" / f"mnist_cnn.{name}.T{T}.snn.onnx"
            seconds = cli_convert(ann_path, calib, snn_path, *options, "-T", str(T))
            per_compiled["convert_seconds"][str(T)] = round(seconds, 2)
            (acc,) = accuracy(snn_path, test_x, test_y, ["logits"])
            per_compiled["accuracy_at_T"][str(T)] = float(acc[0])
            print(f"{name} T={T}: {100 * acc[0]:.2f}% ({round(seconds, 2)} s to convert)")
        runs[name] = per_compiled

    report = {
        "benchmark": "mnist_convert",
        "model": "3x(conv3x3-32, BN, ReLU, AvgPool2) + Linear, torch-trained, exported by torch.onnx (opset 17)",
        "train": {"epochs": args.epochs, "seed": SEED, "seconds": round(train_s, 1), "images": len(train_x)},
        "convert": {
            "T": T_MAX,
            "threshold": "p99.99 layer-wise (half, zero, calibrated); the defaults (init auto, mse, channel-wise)",
            "calib_samples": CALIB_SAMPLES,
            "encoding": "direct",
        },
        "test_images": len(test_x),
        "ann_accuracy": ann_acc,
        "snn": runs,
        "target": "SNN (init half, T=64) >= ANN - 1 point",
        "target_met": runs["half"]["accuracy_T64"] >= ann_acc - 0.01,
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider (plain InferenceSession)",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, python {platform.python_version()}",
    }
    save_json(RESULTS / "mnist_convert.json", report)
    plot(report, RESULTS / "mnist_convert.png")
    print(json.dumps({k: report[k] for k in ("ann_accuracy", "target_met")}))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for init, style in (("half", "-o"), ("zero", "--s")):
        per_t = report["snn"][init]["accuracy_per_T"]
        ts = [int(t) for t in per_t]
        ax.plot(
            ts,
            [100 * per_t[str(t)] for t in ts],
            style,
            ms=3,
            label=f"SNN, v(0) = {'θ/2' if init == 'half' else '0'}",
        )
    for name, style, text in (
        ("calibrated", "-D", "SNN, v(0) calibrated (Alg 2)"),
        ("default", "-^", "SNN, defaults (Alg 2, mse, channel-wise)"),
    ):
        at_t = report["snn"][name]["accuracy_at_T"]
        ax.plot([int(t) for t in at_t], [100 * a for a in at_t.values()], style, ms=5, label=text)
    ax.axhline(100 * report["ann_accuracy"], color="k", lw=1, label="ANN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time steps T")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("icsnn-onnx: MNIST CNN converted, run by ONNX Runtime")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
