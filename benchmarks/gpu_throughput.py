"""GPU throughput: ANN vs SNN on ONNX Runtime's CUDA provider, with and without CUDA graphs.

The GPU check of the fast-execution issue: batch 256, T ∈ {4, 16}, the models of throughput.py
(MNIST CNN, VGG-11-BN, ResNet-18; random weights), both layouts, the portable target (the cpu
target's 1×1-convolution neurons are exact only in float32, and a GPU may convolve in TF32).
Target: SNN throughput ≥ 0.9 × ANN throughput / T, i.e. SNN / (T × ANN) ≤ 1/0.9 ≈ 1.11.

Each row also checks that the SNN computes on the GPU what it computes on the CPU: max |Δ| of the
outputs and the share of equal predicted classes on 32 images, for the ANN and the SNN, with
ONNX Runtime's default TF32 convolutions (which may move a membrane potential across θ) and
without them (``use_tf32=0``).

Each (model, T, layout) is timed in a process of its own (IO binding, outputs pre-allocated; the
ANN and SNN interleaved, median), plain CUDA first, then with a CUDA graph. Rows run T=4 first,
then T=16, and a new row starts only within ``--budget-s`` (the lent GPU's time is short); every
row is written to the JSON as soon as it is measured.

    python benchmarks/gpu_throughput.py                     # on a CUDA machine (~5 min on an H200)
    python benchmarks/gpu_throughput.py --provider cpu --models mnist_cnn --ts 4 --batch 8 \\
        --out /tmp/gpu_smoke.json                           # the same code path, anywhere

benchmarks/device/h200.sh runs it on the lent H200. Writes benchmarks/results/gpu_throughput.{json,png}
(CUDA runs only: a CPU run needs --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULTS, TIMED, save_json  # noqa: E402 - the folder is on the path from here

CACHE = HERE / ".cache" / "gpu_throughput"

BATCH = 256
TS = (4, 16)
LAYOUTS = ("step-major", "time-batched")
MODELS = ("mnist_cnn", "vgg11_bn", "resnet18")
TARGET_RATIO = 1 / 0.9  # SNN ≥ 0.9 × ANN / T  ⇔  SNN time ≤ T × ANN time / 0.9
AGREEMENT_BATCH = 32


def nvidia_smi(query: str) -> str:
    """``nvidia-smi --QUERY --format=csv,noheader,nounits``'s output; "" where it cannot run."""
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--{query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def gpu_memory_mib() -> float | None:
    """GPU memory this process holds (nvidia-smi), or None where that cannot be read."""
    for line in nvidia_smi("query-compute-apps=pid,used_memory").splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(used)
    return None


def agreement(path: str, provider: str, cuda_options: dict[str, str] | None = None) -> dict:
    """The model's outputs on ``provider`` against the same model on the CPU."""
    from icsnn_onnx.runtime import Session
    from icsnn_onnx.runtime.bench import random_feeds

    here = Session(path, provider=provider, cuda_options=cuda_options)
    cpu = Session(path, provider="cpu")
    feeds = random_feeds(here.inputs, AGREEMENT_BATCH, seed=1)
    name = here.output_names[0]
    a, b = here.run(feeds)[name], cpu.run(feeds)[name]
    return {
        "max_abs_diff": float(np.max(np.abs(a - b))),
        "output_scale": float(np.max(np.abs(b))),
        "same_class": float(np.mean(a.argmax(-1) == b.argmax(-1))),
    }


class _Collect(logging.Handler):
    """Keeps the library's warnings (e.g. why a CUDA graph was not captured) for the report."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname}: {record.getMessage()}")


def worker(ann: str, snn: str, provider: str, batch: int, min_seconds: float) -> dict:
    from icsnn_onnx.runtime.bench import bench

    collect = _Collect()
    library = logging.getLogger("icsnn_onnx")
    library.addHandler(collect)
    library.setLevel(logging.INFO)
    result: dict = {"log": collect.messages}
    for cuda_graph in (False, True):
        key = "cuda_graph" if cuda_graph else "plain"
        start = time.perf_counter()
        try:  # one mode failing must not cost the other's figures
            timing = bench(
                ann, snn, batch=batch, provider=provider, cuda_graph=cuda_graph, min_seconds=min_seconds
            )
        except Exception as err:
            result[key] = {"error": _error(err)}
            continue
        result[key] = {**timing.as_dict(), "wall_s": round(time.perf_counter() - start, 2)}
        result[key]["gpu_memory_mib"] = gpu_memory_mib()
    try:
        # ONNX Runtime's CUDA convolutions default to TF32 (10-bit significands); without it they
        # differ from the CPU's only by summation order.
        fp32 = {"use_tf32": "0"}
        result["agreement"] = {
            "ann": agreement(ann, provider),
            "snn": agreement(snn, provider),
            "ann_no_tf32": agreement(ann, provider, fp32),
            "snn_no_tf32": agreement(snn, provider, fp32),
        }
    except Exception as err:
        result["agreement"] = {"error": _error(err)}
    return result


def _error(err: Exception) -> str:
    message = (str(err).strip() or "(no message)").splitlines()[0]
    return f"{type(err).__name__}: {message[:300]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=5, metavar=("ANN", "SNN", "PROVIDER", "BATCH", "SECONDS"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--ts", nargs="+", type=int, default=list(TS))
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--provider", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timed runs per measurement")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no row after this")
    parser.add_argument("--out", type=Path, help="JSON path (PNG beside it); needed off CUDA")
    args = parser.parse_args()
    if args.worker:
        ann, snn, provider, batch, seconds = args.worker
        print(json.dumps(worker(ann, snn, provider, int(batch), float(seconds))))
        return

    import onnxruntime as ort
    import throughput
    import zoo

    import icsnn_onnx
    from icsnn_onnx.runtime import cuda_available

    if args.provider == "cuda" and not cuda_available():
        sys.exit("the CUDA provider does not work here (see benchmarks/device/h200.sh)")
    if args.provider != "cuda" and args.out is None:
        sys.exit("off CUDA this is a smoke run: give --out, results/gpu_throughput.json is for CUDA figures")
    out = args.out or RESULTS / "gpu_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    report: dict = {
        "benchmark": "gpu_throughput",
        "batch": args.batch,
        "provider": args.provider,
        "target_ratio": round(TARGET_RATIO, 4),
        "machine": f"{platform.machine()}, onnxruntime {ort.__version__}, {nvidia_smi('query-gpu=name') or 'no GPU'}",
        "repeats": "rounds of one SNN run and T back-to-back ANN runs filling min_seconds (>= 5), IO-bound; per (model, T, layout) a process of its own",
        "min_seconds": args.min_seconds,
        "rows": [],
        "skipped": [],
    }
    anns = {}
    for name in args.models:
        anns[name] = CACHE / f"{name}.onnx"
        zoo.export(throughput.build(name), throughput.SHAPES[name], str(anns[name]))
    for T in args.ts:
        for name in args.models:
            for layout in args.layouts:
                elapsed = time.perf_counter() - began
                if elapsed > args.budget_s:
                    report["skipped"].append({"model": name, "T": T, "layout": layout})
                    continue
                start = time.perf_counter()
                snn = icsnn_onnx.convert(
                    anns[name], throughput.calibration(name), T=T, layout=layout, **TIMED
                )
                compile_s = time.perf_counter() - start
                snn_path = CACHE / f"{name}.T{T}.{layout}.snn.onnx"
                icsnn_onnx.save_model(snn, snn_path, force=True)
                measured = throughput.in_subprocess(
                    str(anns[name]),
                    str(snn_path),
                    args.provider,
                    str(args.batch),
                    str(args.min_seconds),
                    script=__file__,
                    timeout=max(60.0, args.budget_s + 180 - elapsed),
                )
                row = {
                    "model": name,
                    "T": T,
                    "layout": layout,
                    "nodes": len(snn.graph.node),
                    "compile_s": round(compile_s, 2),
                    **measured,
                }
                report["rows"].append(row)
                print(summary(row), flush=True)
                save_json(out, report)
    report["wall_s"] = round(time.perf_counter() - began, 1)
    save_json(out, report)
    if report["rows"]:
        plot(report, out.with_suffix(".png"))
    print(table(report))


def _ratio(mode: dict) -> str:
    if "error" in mode:
        return "failed"
    return f"{mode['ratio_to_dense_bound']:.2f}" + ("" if mode["cuda_graph"] else " (no graph)")


def _same_class(row: dict) -> str:
    shares = [row["agreement"].get(k) for k in ("snn", "snn_no_tf32")]
    if None in shares:
        return "n/a"
    return " / ".join(f"{a['same_class']:.1%} (max|Δ| {a['max_abs_diff']:.2g})" for a in shares)


def summary(row: dict) -> str:
    head = f"{row['model']} T={row['T']} {row['layout']}"
    if "error" in row:
        return f"{head}: {row['error']}"
    errors = [f"{k}: {row[k]['error']}" for k in ("plain", "cuda_graph") if "error" in row[k]]
    return (
        f"{head}: SNN / (T × ANN) plain {_ratio(row['plain'])}, CUDA graph {_ratio(row['cuda_graph'])}; "
        f"SNN vs CPU same class {_same_class(row)}" + "".join(f"; {e}" for e in errors)
    )


def _ms(mode: dict, net: str) -> str:
    return "failed" if "error" in mode else f"{1000 * mode[net]['median_s']:.2f} ms"


def table(report: dict) -> str:
    """Markdown table of the rows: ms per batch, ratio to T × ANN, with and without CUDA graphs."""
    lines = [
        "| model | T | layout | ANN | SNN | SNN / (T × ANN) | ANN, graph | SNN, graph | SNN / (T × ANN), graph | SNN vs CPU, same class: TF32 on / off |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['T']} | {row['layout']} | {row['error']} |")
            continue
        plain, graph = row["plain"], row["cuda_graph"]
        lines.append(
            f"| {row['model']} | {row['T']} | {row['layout']} "
            f"| {_ms(plain, 'ann')} | {_ms(plain, 'snn')} | {_ratio(plain)} "
            f"| {_ms(graph, 'ann')} | {_ms(graph, 'snn')} | {_ratio(graph)} | {_same_class(row)} |"
        )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the bench extra; the JSON and the table do without
        print(f"matplotlib not installed: no {path.name}", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "error" not in r]
    labels = [f"{r['model']}\nT={r['T']} {r['layout']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.2), dpi=110)
    for offset, key, label in ((-0.2, "plain", "CUDA"), (0.2, "cuda_graph", "CUDA graph")):
        ratios = [r[key].get("ratio_to_dense_bound", np.nan) for r in rows]
        ax.bar(x + offset, ratios, 0.4, label=label)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="T × ANN (dense bound)")
    ax.axhline(report["target_ratio"], color="r", ls=":", lw=1, label="target: ≥ 0.9 × ANN / T")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("SNN / (T × ANN)")
    ax.set_title(f"{report['machine']}, batch {report['batch']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
