"""The spike report of the MNIST CNN: what README's "Report" section shows.

Converts the benchmarks' trained MNIST CNN (results/mnist_cnn.onnx, from mnist_convert.py) with
the installed CLI's defaults at T=32 on 2000 training images, then runs
``icsnn-onnx report`` on the 10k test images with the ANN beside it. Everything the user path
writes lands in results/report/: report.json (the record, with its energy convention and
versions) and the four plots.

    python benchmarks/report_mnist.py        # ~1-2 min on 2 CPU cores; needs ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS
from mnist_data import DEFAULT_DIR, load_mnist

SEED = 0  # the calibration images are mnist_convert.py's
CALIB_SAMPLES = 2000
T = 32


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("-T", type=int, default=T)
    args = parser.parse_args()
    train_x, _, test_x, test_y = load_mnist(args.data_dir)
    CACHE.mkdir(exist_ok=True)
    calib, test = CACHE / "mnist_calib.npz", CACHE / "mnist_test.npz"
    rng = np.random.default_rng(SEED)
    np.savez(calib, x=train_x[rng.choice(len(train_x), CALIB_SAMPLES, replace=False)])
    np.savez(test, x=test_x, y=test_y)
    ann, snn = RESULTS / "mnist_cnn.onnx", CACHE / f"mnist_cnn.T{args.T}.snn.onnx"
    cli = [shutil.which("icsnn-onnx") or sys.exit("icsnn-onnx not on PATH: pip install -e . first")]
    subprocess.run(
        [
            *cli,
            "convert",
            str(ann),
            "--calib",
            str(calib),
            "-T",
            str(args.T),
            "-o",
            str(snn),
            "--force",
            "-q",
            *("--init", "half", "--no-channel-wise", "--threshold", "p99.99"),  # the defaults when measured
        ],
        check=True,
    )
    start = time.perf_counter()
    subprocess.run(
        [
            *cli,
            "report",
            str(snn),
            "--data",
            str(test),
            "--ann",
            str(ann),
            "-o",
            str(RESULTS / "report"),
            "-q",
        ],
        check=True,
    )
    print(f"report of {len(test_x)} images at T={args.T}: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
