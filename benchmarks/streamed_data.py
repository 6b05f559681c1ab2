"""Data larger than memory: `convert` and `eval` on a memory-mapped `.npy` of ≥ 4 GB.

A small CNN (torch, random weights) on 3×128×128 images; the dataset is 4 GiB of float32 images
(21,845 of them, smooth random values) written with `np.lib.format.open_memmap`, never held in
memory. In a fresh process each, sampled every 20 ms from /proc: peak anonymous memory (what the
process allocated) and the kernel's peak resident set (which also counts the file's pages the
kernel keeps cached while memory is free: clean, dropped under pressure):

- `icsnn-onnx convert ann.onnx --calib big.npy -T 4` — thresholds from two streamed passes over
  all 21,846 images, Alg 2 on the first 256;
- `icsnn-onnx eval snn.onnx --data big.npy --ann ann.onnx` — the SNN and the ANN over every image;
- the same eval on the images as a folder of 8 `.npy` shards (memory-mapped) and of 8 `.npz`
  shards with labels (each decompressed whole in its turn: bounded by a shard, 512 MiB);

against one batch of input (64 images, 12 MiB) and the process's own floor (Python, numpy, ONNX
Runtime and the model: `icsnn-onnx inspect`). The target: peak memory a small multiple of one
batch plus the model, whatever the dataset's size.

    python benchmarks/streamed_data.py [--gib 4]    # ~5 min on 2 cores; writes ~12 GiB under /tmp

Writes benchmarks/results/streamed_data.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, save_json

SHAPE = (3, 128, 128)
BATCH = 64
SHARDS = 8


def build_ann(path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=4),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    torch.onnx.export(
        net,
        (torch.rand(2, *SHAPE),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
    )


def write_dataset(path: Path, gib: float) -> int:
    """Smooth random images, written chunk by chunk into a memory-mapped .npy."""
    n = int(gib * (1 << 30)) // (4 * int(np.prod(SHAPE)))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *SHAPE))
    rng = np.random.default_rng(0)
    coarse = (SHAPE[0], SHAPE[1] // 8, SHAPE[2] // 8)
    for start in range(0, n, 512):
        stop = min(start + 512, n)
        small = rng.random((stop - start, *coarse), dtype=np.float32)
        out[start:stop] = small.repeat(8, axis=2).repeat(8, axis=3)
    out.flush()
    del out
    return n


def _status(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / VmHWM of a process, in KiB (Linux /proc)."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def peak(command: list[str]) -> dict:
    """Wall seconds and peak memory of ``command``, sampled every 20 ms: anonymous memory (what
    the process allocated: arrays, ONNX Runtime's buffers, the model) and the kernel's peak
    resident set, which also counts the mapped file's pages the kernel keeps cached (clean,
    dropped under memory pressure)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    anon = hwm = 0
    while child.poll() is None:
        try:
            status = _status(child.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        anon, hwm = max(anon, status.get("RssAnon", 0)), max(hwm, status.get("VmHWM", 0))
        time.sleep(0.02)
    out, err = child.communicate()
    if child.returncode:
        raise SystemExit(err)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_anonymous_mib": round(anon / 1024, 1),
        "peak_rss_mib": round(hwm / 1024, 1),
        "said": (out.strip().splitlines() or [""])[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gib", type=float, default=4.0, help="dataset size in GiB")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "icsnn_onnx"]
    with tempfile.TemporaryDirectory(prefix="icsnn-streamed-") as tmp:
        root = Path(tmp)
        build_ann(root / "ann.onnx")
        start = time.perf_counter()
        n = write_dataset(root / "big.npy", args.gib)
        print(
            f"wrote {n} images ({(root / 'big.npy').stat().st_size / (1 << 30):.2f} GiB) "
            f"in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        runs = {
            "floor (inspect: Python, numpy, ONNX Runtime, the model)": [
                *cli,
                "inspect",
                str(root / "ann.onnx"),
            ],
            "convert --calib big.npy -T 4": [
                *cli,
                "convert",
                str(root / "ann.onnx"),
                "-o",
                str(root / "snn.onnx"),
                "--calib",
                str(root / "big.npy"),
                "-T",
                "4",
                "--batch-size",
                str(BATCH),
            ],
            "eval snn.onnx --data big.npy --ann ann.onnx": [
                *cli,
                "eval",
                str(root / "snn.onnx"),
                "--data",
                str(root / "big.npy"),
                "--ann",
                str(root / "ann.onnx"),
                "--batch-size",
                str(BATCH),
            ],
        }
        # The same images as shards read one at a time: 8 .npy (memory-mapped, like big.npy) and
        # 8 .npz with labels (each decompressed whole when its turn comes).
        big = np.load(root / "big.npy", mmap_mode="r")
        labels = np.random.default_rng(1).integers(0, 10, len(big))
        for kind in ("npy", "npz"):
            (root / kind).mkdir()
            for i, part in enumerate(np.array_split(np.arange(len(big)), SHARDS)):
                rows = slice(int(part[0]), int(part[-1]) + 1)
                if kind == "npy":
                    np.save(root / kind / f"part-{i}.npy", big[rows])
                else:
                    np.savez(root / kind / f"part-{i}.npz", x=big[rows], y=labels[rows])
        del big
        for kind in ("npy", "npz"):
            runs[f"eval snn.onnx --data {kind}/ ({SHARDS} .{kind} shards) --ann ann.onnx"] = [
                *cli,
                "eval",
                str(root / "snn.onnx"),
                "--data",
                str(root / kind),
                "--ann",
                str(root / "ann.onnx"),
                "--batch-size",
                str(BATCH),
            ]
        results = {}
        for label, command in runs.items():
            results[label] = peak(command)
            print(label, results[label], flush=True)
        size_mib = (root / "big.npy").stat().st_size / (1 << 20)
    batch_mib = BATCH * int(np.prod(SHAPE)) * 4 / (1 << 20)
    report = {
        "what": "peak resident memory of convert and eval on a memory-mapped .npy larger than a few batches",
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "images": n,
        "image_shape": list(SHAPE),
        "dataset_mib": round(size_mib),
        "batch": BATCH,
        "batch_mib": round(batch_mib, 1),
        "machine_memory_mib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / (1 << 20)),
        "runs": results,
    }
    save_json(RESULTS / "streamed_data.json", report)
    print(f"wrote {RESULTS / 'streamed_data.json'}")


if __name__ == "__main__":
    main()
