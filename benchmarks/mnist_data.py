"""Read the MNIST IDX files shipped in ../shared/data/mnist (benchmarks only; tests never need it)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of uint8")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(directory: Path = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y); images as float32 [N, 1, 28, 28] in [0, 1]."""
    if not directory.is_dir():
        raise SystemExit(f"MNIST not found at {directory} (pass --data-dir)")

    def images(name: str) -> np.ndarray:
        return (_read_idx(directory / name).astype(np.float32) / 255.0)[:, None]

    def labels(name: str) -> np.ndarray:
        return _read_idx(directory / name).astype(np.int64)

    return (
        images("train-images-idx3-ubyte.gz"),
        labels("train-labels-idx1-ubyte.gz"),
        images("t10k-images-idx3-ubyte.gz"),
        labels("t10k-labels-idx1-ubyte.gz"),
    )
