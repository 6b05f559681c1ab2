"""Long simulations: the unrolled (step-major) layout against `--layout loop` at T = 64, 256, 1024.

The VGG-11 (BN) and ResNet-18 of benchmarks/throughput.py (3×32×32, random weights), converted
with `--init half --threshold mse` (the layout is what differs; Alg 2 builds unrolled trial SNNs,
so it is not used here) on 64 random calibration images. Each step runs in a process of its own,
so peak memory (the child's ru_maxrss) is that step's:

- compile: `convert` + `save_model` (seconds, peak MiB, nodes, file size);
- load: an ONNX Runtime session of the file (seconds, peak MiB);
- run: one image (batch 1), two runs after the load, the faster one (seconds, peak MiB of the
  load and the runs together); the ANN's own load and run beside it, for what the SNN adds.

Where the unrolled graph is over the operator budget (`MAX_UNROLLED_OPS`), conversion refuses it
before any work and the row says so with the estimate; `--layout auto` takes the loop there.
Checks that loop and step-major give the same output where both exist (max |difference|).

    python benchmarks/layout_scale.py     # ~20 min on 2 cores

Writes benchmarks/results/layout_scale.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "layout_scale"
sys.path.insert(0, str(HERE))
from _common import RESULTS, save_json  # noqa: E402

NETS = ("vgg11_bn", "resnet18")
TS = (64, 256, 1024)
LAYOUTS = ("step-major", "loop")
SHAPE = (3, 32, 32)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_compile(ann: str, out: str, T: int, layout: str) -> dict:
    from icsnn_onnx import convert, save_model
    from icsnn_onnx.errors import ConversionError

    calib = np.random.default_rng(1).random((64, *SHAPE)).astype(np.float32)
    start = time.perf_counter()
    try:
        model = convert(ann, calib, T=T, layout=layout, init="half", threshold="mse")
    except ConversionError as err:
        return {"refused": str(err), "seconds": time.perf_counter() - start, "peak_mib": _peak_mib()}
    save_model(model, out, force=True)
    return {
        "seconds": time.perf_counter() - start,
        "peak_mib": _peak_mib(),
        "nodes": sum(1 for _ in model.graph.node),
        "file_mib": Path(out).stat().st_size / 2**20,
    }


def child_run(snn: str, reference: str) -> dict:
    from icsnn_onnx import Session

    start = time.perf_counter()
    session = Session(snn, provider="cpu")
    load = time.perf_counter() - start
    load_peak = _peak_mib()
    x = np.random.default_rng(2).random((1, *SHAPE)).astype(np.float32)
    runs, out = [], None
    for _ in range(2):
        start = time.perf_counter()
        out = session.run({session.inputs[0].name: x})
        runs.append(time.perf_counter() - start)
    y = next(iter(out.values()))
    if reference:
        np.save(reference, y)
    return {
        "load_s": load,
        "load_peak_mib": load_peak,
        "run_s": min(runs),
        "runs_s": runs,
        "peak_mib": _peak_mib(),
    }


def in_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(report: dict) -> str:
    rows = [
        "| network | T | layout | nodes | compile (peak) | load | run, 1 image | peak memory of load + run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        run = r.get("run", {})
        if r["layout"] == "ANN":
            rows.append(
                f"| {r['net']} | — | ANN | | | {run['load_s']:.2f} s | {1000 * run['run_s']:.1f} ms | {run['peak_mib']:.0f} MiB |"
            )
            continue
        c = r["compile"]
        if "refused" in c or "error" in c:
            why = c.get("refused") or c["error"]
            rows.append(
                f"| {r['net']} | {r['T']} | {r['layout']} | **refused** before any work: {why.split(';')[0]} | | | | |"
            )
            continue
        load = f"{run['load_s']:.2f} s" if "load_s" in run else run.get("error", "—")
        speed = f"{run['run_s']:.2f} s" if "run_s" in run else "—"
        peak = f"{run['peak_mib']:.0f} MiB" if "peak_mib" in run else "—"
        rows.append(
            f"| {r['net']} | {r['T']} | {r['layout']} | {c['nodes']:,} | {c['seconds']:.1f} s ({c['peak_mib']:.0f} MiB) | "
            f"{load} | {speed} | {peak} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print README's table of the committed JSON")
    parser.add_argument("--child", nargs="+")
    parser.add_argument("--nets", nargs="+", default=list(NETS))
    parser.add_argument("--T", nargs="+", type=int, default=list(TS))
    args = parser.parse_args()
    if args.table:
        print(table(json.loads((RESULTS / "layout_scale.json").read_text())))
        return
    if args.child:
        kind, *rest = args.child
        if kind == "compile":
            print(json.dumps(child_compile(rest[0], rest[1], int(rest[2]), rest[3])))
        else:
            print(json.dumps(child_run(rest[0], rest[1] if len(rest) > 1 else "")))
        return

    import onnxruntime
    import torch
    from throughput import build
    from zoo import export

    from icsnn_onnx.passes.scale import MAX_UNROLLED_OPS

    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for net in args.nets:
        ann = CACHE / f"{net}.onnx"
        if not ann.exists():
            torch.manual_seed(0)
            export(build(net), SHAPE, str(ann))
        baseline = {"net": net, "T": None, "layout": "ANN", "run": in_child("run", str(ann))}
        rows.append(baseline)  # the same weights without time: what the SNN's memory adds to
        print(json.dumps(baseline), flush=True)
        for T in args.T:
            outputs = {}
            for layout in LAYOUTS:
                snn = CACHE / f"{net}.T{T}.{layout}.snn.onnx"
                row = {
                    "net": net,
                    "T": T,
                    "layout": layout,
                    "compile": in_child("compile", str(ann), str(snn), str(T), layout),
                }
                if "refused" not in row["compile"] and "error" not in row["compile"]:
                    out = CACHE / f"{net}.T{T}.{layout}.out.npy"
                    row["run"] = in_child("run", str(snn), str(out))
                    if out.exists():
                        outputs[layout] = np.load(out)
                    snn.unlink(missing_ok=True)  # unrolled files reach hundreds of MiB
                rows.append(row)
                print(json.dumps(row), flush=True)
            if len(outputs) == 2:
                diff = float(np.max(np.abs(outputs["loop"] - outputs["step-major"])))
                for row in rows[-2:]:
                    row["max_abs_difference_loop_vs_step_major"] = diff
    save_json(
        RESULTS / "layout_scale.json",
        {
            "benchmark": "layout_scale",
            "machine": f"{platform.machine()}, 2 cores, onnxruntime {onnxruntime.__version__}",
            "conversion": "--init half --threshold mse, 64 random calibration images; runs: batch 1, faster of 2",
            "max_unrolled_ops": MAX_UNROLLED_OPS,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
