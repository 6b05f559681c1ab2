"""Throughput: ANN vs SNN (both layouts, both targets) vs SpikingJelly, on the CPU, batch 64.

Models: the MNIST CNN of benchmarks/mnist_convert.py, a CIFAR-shaped VGG-11 with BN and a
ResNet-18, built in torch with random weights (speed does not need trained weights), and a
784-512-512-10 MNIST MLP, whose first layer — hoisted out of the steps under direct coding — is
most of the ANN's work (it shows what hoisting buys where a network's cost allows it). For
T ∈ {4, 8, 16, 32}: ANN time, SNN time for each layout with the portable target and step-major
with ``--target cpu`` (each interleaved with the ANN, median), the
ratio SNN / (T × ANN), SpikingJelly's converted model (ann2snn RateCodingRecipe, 99.9%) on the
same input (the faster of its single- and multi-step modes), and peak RSS: the SNN's own (its
session and first two runs, before the ANN is loaded) and SpikingJelly's (each measurement runs in a
process of its own).

    pip install -e ".[bench]"
    pip install --no-deps spikingjelly==2.0.0 && pip install loguru requests scipy
    python benchmarks/throughput.py          # ~35 min on 2 CPU cores

Writes benchmarks/results/throughput.{json,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "throughput"
sys.path.insert(0, str(HERE))
from _common import RESULTS, TIMED, save_json  # noqa: E402 - the folder is on the path from here

BATCH = 64
TS = (4, 8, 16, 32)
# (layout, target) compiled and timed; the cpu target only pays off step-major (the time-batched
# layout's Split/Concat leave ONNX Runtime's blocked layout at every neuron anyway).
VARIANTS = (("step-major", "portable"), ("time-batched", "portable"), ("step-major", "cpu"))
# SpikingJelly rounds (each: single-step, then multi-step); 3 when a round takes over 10 s.
# The ONNX Runtime harness picks its own count (>= 5, ~3 s).
REPEATS = 5
SHAPES = {
    "mnist_cnn": (1, 28, 28),
    "mnist_mlp": (1, 28, 28),
    "vgg11_bn": (3, 32, 32),
    "resnet18": (3, 32, 32),
}


def build(name: str):
    import torch
    import zoo
    from mnist_convert import build as mnist_cnn

    torch.manual_seed(0)
    builders = {
        "mnist_cnn": mnist_cnn,
        "mnist_mlp": zoo.mnist_mlp,
        "vgg11_bn": zoo.vgg11_bn,
        "resnet18": zoo.resnet18,
    }
    model = builders[name]()
    return zoo.randomize_batchnorm(model)


def calibration(name: str, n: int = 128) -> np.ndarray:
    return np.random.default_rng(1).random((n, *SHAPES[name])).astype(np.float32)


def worker_onnx(ann: str, snn: str) -> dict:
    from icsnn_onnx.runtime.bench import bench

    return bench(ann, snn, batch=BATCH, warmup=1).as_dict()


def worker_spikingjelly(name: str, T: int) -> dict:
    """SpikingJelly's conversion of the same torch ANN, timed on the same batch size.

    Both of SpikingJelly's step modes are timed: single-step (the converted module called T
    times) and multi-step (its neurons in step mode "m", every other layer run once on the input
    repeated T times along the batch axis), interleaved; the faster one is SpikingJelly's figure.
    Our SNN is timed in a process of its own, not here: torch's OpenMP threads spin-wait after
    each call and slowed the ONNX Runtime runs interleaved with them (MNIST CNN, T=16: 95 ms
    instead of 55 ms).
    """
    import torch
    from torch import nn

    warnings.simplefilter("ignore")
    from spikingjelly.activation_based import ann2snn, functional, neuron

    torch.set_num_threads(2)
    ann = build(name)
    calib = torch.from_numpy(calibration(name))
    loader = [(calib[i : i + 32], torch.zeros(32)) for i in range(0, len(calib), 32)]
    recipe = ann2snn.RateCodingRecipe(dataloader=loader, mode="99.9%")
    single = ann2snn.FXConverter(recipe=recipe, device="cpu").convert(ann).eval()
    multi = copy.deepcopy(single)

    class TimeMajor(nn.Module):
        """Hands a multi-step neuron [T, N, ...] and returns [T·N, ...] to the next layer."""

        def __init__(self, node: nn.Module) -> None:
            super().__init__()
            self.node = node

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.node(x.reshape(T, -1, *x.shape[1:])).flatten(0, 1)

    for parent in list(multi.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, neuron.BaseNode):
                child.step_mode = "m"
                setattr(parent, child_name, TimeMajor(child))
    x = torch.from_numpy(np.random.default_rng(0).random((BATCH, *SHAPES[name])).astype(np.float32))

    def run_single() -> torch.Tensor:
        with torch.no_grad():
            functional.reset_net(single)
            out = single(x)
            for _ in range(T - 1):
                out = out + single(x)
            return out

    def run_multi() -> torch.Tensor:
        with torch.no_grad():
            functional.reset_net(multi)
            y = multi(x.repeat(T, *([1] * (x.dim() - 1))))
            return y.reshape(T, BATCH, *y.shape[1:]).sum(0)

    from icsnn_onnx.runtime.bench import peak_rss_mib

    # Warm-up, and proof that both modes compute the same network.
    start = time.perf_counter()
    gap = (run_single() - run_multi()).abs().max().item()
    rounds = REPEATS if time.perf_counter() - start < 10 else 3
    runs: dict[str, list[float]] = {"single-step": [], "multi-step": []}
    for _ in range(rounds):
        for mode, run in (("single-step", run_single), ("multi-step", run_multi)):
            start = time.perf_counter()
            run()
            runs[mode].append(time.perf_counter() - start)
    medians = {mode: statistics.median(r) for mode, r in runs.items()}
    best = min(medians, key=medians.__getitem__)
    return {
        "median_s": medians[best],
        "runs_s": runs[best],
        "mode": best,
        "modes_median_s": medians,
        "modes_max_abs_diff": gap,
        "peak_rss_mib": peak_rss_mib(),
    }


def in_subprocess(*args: str, script: str = __file__, timeout: float = 3000) -> dict:
    """``script --worker ARGS`` in a fresh process: the JSON of its last output line, or
    ``{"error": ...}`` (its last stderr line, or the timeout)."""
    try:
        done = subprocess.run(
            [sys.executable, script, "--worker", *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}"
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs="+")
    parser.add_argument("--models", nargs="+", default=list(SHAPES))
    parser.add_argument("--no-spikingjelly", action="store_true")
    parser.add_argument("--table", action="store_true", help="print README's table from the JSON")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads((RESULTS / "throughput.json").read_text())))
        return
    if args.worker:
        kind, *rest = args.worker
        result = worker_onnx(*rest) if kind == "onnx" else worker_spikingjelly(rest[0], int(rest[1]))
        print(json.dumps(result))
        return

    import onnxruntime as ort
    import torch
    import zoo

    import icsnn_onnx

    CACHE.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "throughput.json"
    kept = json.loads(previous.read_text())["models"] if previous.exists() else {}
    report: dict = {
        "benchmark": "throughput",
        "batch": BATCH,
        "repeats": "icsnn-onnx: rounds of one SNN run and T back-to-back ANN runs, filling ~3 s (>= 5); SpikingJelly: 5 rounds (3 when one takes > 10 s) of its two step modes, interleaved, in a process of its own",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, onnxruntime {ort.__version__} CPU",
        "models": {k: v for k, v in kept.items() if k not in args.models},  # remeasure only these
    }
    for name in args.models:
        ann_path = CACHE / f"{name}.onnx"
        zoo.export(build(name), SHAPES[name], str(ann_path))
        entry: dict = {"runs": []}
        for T in TS:
            for layout, target in VARIANTS:
                start = time.perf_counter()
                snn = icsnn_onnx.convert(
                    ann_path, calibration(name), T=T, layout=layout, target=target, **TIMED
                )
                compile_s = time.perf_counter() - start
                snn_path = CACHE / f"{name}.T{T}.{layout}.{target}.snn.onnx"
                icsnn_onnx.save_model(snn, snn_path, force=True)
                start = time.perf_counter()
                ort.InferenceSession(str(snn_path), providers=["CPUExecutionProvider"])
                load_s = time.perf_counter() - start
                timing = in_subprocess("onnx", str(ann_path), str(snn_path))
                row = {
                    "T": T,
                    "layout": layout,
                    "target": target,
                    "nodes": len(snn.graph.node),
                    "compile_s": round(compile_s, 2),
                    "load_s": round(load_s, 2),
                    **timing,
                }
                entry["runs"].append(row)
                print(
                    name,
                    T,
                    layout,
                    target,
                    {
                        k: row.get(k)
                        for k in (
                            "nodes",
                            "compile_s",
                            "load_s",
                            "ratio_to_dense_bound",
                            "snn_peak_rss_mib",
                            "error",
                        )
                    },
                    flush=True,
                )
            if not args.no_spikingjelly:
                sj = in_subprocess("spikingjelly", name, str(T))
                entry.setdefault("spikingjelly", []).append({"T": T, **sj})
                print(name, T, "spikingjelly", sj.get("median_s"), sj.get("error"), flush=True)
        report["models"][name] = entry
        report["models"] = {k: report["models"][k] for k in SHAPES if k in report["models"]}
        save_json(RESULTS / "throughput.json", report)
    plot(report, RESULTS / "throughput.png")


def _ms(seconds: float) -> str:
    """Milliseconds to one decimal below 10 ms, whole above."""
    ms = 1000 * seconds
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def table(report: dict) -> str:
    """The README table: per model and T, times in ms per batch and ratios to T × ANN."""
    lines = [
        "| model | T | ANN | SNN step-major | SNN step-major, `--target cpu` | SNN time-batched "
        "| SNN / (T × ANN): portable, cpu | SpikingJelly | SpikingJelly / SNN (cpu) | SNN peak RSS: step-major portable / cpu, time-batched |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in report["models"].items():
        sj = {r["T"]: r for r in entry.get("spikingjelly", [])}
        by_t: dict[int, dict[tuple[str, str], dict]] = {}
        for r in entry["runs"]:
            by_t.setdefault(r["T"], {})[(r["layout"], r.get("target", "portable"))] = r
        for T, runs in sorted(by_t.items()):
            step, batched = runs[("step-major", "portable")], runs[("time-batched", "portable")]
            cpu = runs[("step-major", "cpu")]
            peer = sj.get(T, {}).get("median_s")
            snn_s = cpu["snn"]["median_s"]
            lines.append(
                f"| {name} | {T} | {1000 * step['ann']['median_s']:.1f} ms "
                f"| {_ms(step['snn']['median_s'])} | {_ms(snn_s)} "
                f"| {_ms(batched['snn']['median_s'])} "
                f"| {step['ratio_to_dense_bound']:.2f}, {cpu['ratio_to_dense_bound']:.2f} "
                f"| {'n/a' if peer is None else _ms(peer)} "
                f"| {'n/a' if peer is None else f'{peer / snn_s:.1f}×'} "
                f"| {step['snn_peak_rss_mib']:.0f} / {cpu['snn_peak_rss_mib']:.0f}, "
                f"{batched['snn_peak_rss_mib']:.0f} MiB |"
            )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        entry = report["models"][name]
        runs = [r for r in entry["runs"] if "snn" in r]
        ann = statistics.median(r["ann"]["median_s"] for r in runs)
        ts = sorted({r["T"] for r in runs})
        ax.plot(ts, [1000 * ann * t for t in ts], "k--", label="T × ANN (dense bound)")
        for (layout, target), style in zip(VARIANTS, ("-o", "-s", "-D"), strict=True):
            pts = [
                (r["T"], 1000 * r["snn"]["median_s"])
                for r in runs
                if (r["layout"], r.get("target", "portable")) == (layout, target)
            ]
            ax.plot(*zip(*pts, strict=True), style, label=f"icsnn-onnx {layout}, {target}")
        sj = [(r["T"], 1000 * r["median_s"]) for r in entry.get("spikingjelly", []) if "median_s" in r]
        if sj:
            ax.plot(*zip(*sj, strict=True), "-^", label="SpikingJelly ann2snn")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("time steps T")
        ax.set_ylabel(f"ms per batch of {report['batch']}")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
