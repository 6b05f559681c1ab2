"""Evaluation on Ray: images/s with 1 and 2 workers against one process, on this machine.

The MNIST CNN (benchmarks/results/mnist_cnn.onnx, trained) converted at T = 8 with defaults on
512 training images; the 10,000 MNIST test images written as 10 `.npz` shards; the SNN and the
ANN evaluated together (accuracy, per-step accuracy, agreement), as `icsnn-onnx eval --ann` does:

- local: this process, ONNX Runtime with its default threads (both cores), the SNN then the ANN;
- ray, 1 and 2 workers: `score` on a local Ray (`ray.init(num_cpus=2)`, started once, not timed),
  each worker one ONNX Runtime thread holding both sessions; the time includes starting the
  workers' actors (Ray Data starts them per run), measured apart on 64 images.

Interleaved rounds (local, 1, 2 workers), medians. Checks that every engine gives the same
accuracies and agreement exactly.

    pip install -e ".[bench,ray]"
    python benchmarks/ray_eval.py        # ~4 min on 2 cores; needs ../shared/data/mnist

Writes benchmarks/results/ray_eval.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULTS, save_json  # noqa: E402
from mnist_data import load_mnist  # noqa: E402

T = 8
SHARDS = 10
BATCH = 64


def table(report: dict) -> str:
    rows = [
        "| engine | wall | images/s | images/s after the workers' start-up |",
        "| --- | --- | --- | --- |",
    ]
    for name, e in report["engines"].items():
        after = (
            f"{e['images_per_s_after_startup']:,.0f} (start-up {e['startup_s']:.1f} s)"
            if "startup_s" in e
            else ""
        )
        rows.append(f"| {name} | {e['wall_s']:.1f} s | {e['images_per_s']:,.0f} | {after} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--table", action="store_true", help="print README's table of the committed JSON")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads((RESULTS / "ray_eval.json").read_text())))
        return

    import onnxruntime
    import ray

    from icsnn_onnx import Session, convert, evaluate, load_dataset
    from icsnn_onnx.runtime.engine import RayEngine
    from icsnn_onnx.runtime.scoring import score

    x_train, _, x_test, y_test = load_mnist()
    ann = RESULTS / "mnist_cnn.onnx"
    snn = convert(ann, x_train[:512], T=T, per_step=True).SerializeToString()
    folder = Path(tempfile.mkdtemp(prefix="ray_eval_"))
    for i, part in enumerate(np.array_split(np.arange(len(x_test)), SHARDS)):
        np.savez(folder / f"part-{i}.npz", x=x_test[part], y=y_test[part])
    session, ann_session = Session(snn, provider="cpu"), Session(ann, provider="cpu")
    data = load_dataset(folder, session.inputs)
    small = load_dataset({"x": x_test[:64], "y": y_test[:64]}, session.inputs)

    def local() -> tuple:
        s, a = evaluate(session, data, batch_size=BATCH), evaluate(ann_session, data, batch_size=BATCH)
        return s.accuracy, a.accuracy, s.per_step_accuracy, s.agreement(a)

    def distributed(workers: int, source=data) -> tuple:
        r = score(
            {"snn": snn, "ann": ann}, source, RayEngine(workers=workers), reference="ann", batch_size=BATCH
        )
        return r.accuracy["snn"], r.accuracy["ann"], r.per_step_accuracy["snn"], r.agreement["snn"]

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    engines = {
        "local": local,
        "ray, 1 worker": lambda: distributed(1),
        "ray, 2 workers": lambda: distributed(2),
    }
    times: dict[str, list[float]] = {name: [] for name in engines}
    startup: dict[str, list[float]] = {"ray, 1 worker": [], "ray, 2 workers": []}
    found = {}
    for _ in range(args.rounds):
        for name, fn in engines.items():
            start = time.perf_counter()
            found[name] = fn()
            times[name].append(time.perf_counter() - start)
        for workers, name in ((1, "ray, 1 worker"), (2, "ray, 2 workers")):
            start = time.perf_counter()
            distributed(workers, small)
            startup[name].append(time.perf_counter() - start)
    ray.shutdown()
    same = all(v == found["local"] for v in found.values())
    rows = {}
    for name in engines:
        wall = statistics.median(times[name])
        row = {"wall_s": wall, "images_per_s": len(x_test) / wall, "runs_s": times[name]}
        if name in startup:
            fixed = statistics.median(startup[name])
            row |= {"startup_s": fixed, "images_per_s_after_startup": len(x_test) / max(wall - fixed, 1e-9)}
        rows[name] = row
        print(f"{name:16s} {wall:6.1f} s  {row['images_per_s']:7.0f} images/s", flush=True)
    snn_acc, ann_acc, steps, agree = found["local"]
    print(
        f"accuracy SNN {snn_acc:.4f} ANN {ann_acc:.4f} agreement {agree:.4f}; every engine the same: {same}"
    )
    save_json(
        RESULTS / "ray_eval.json",
        {
            "benchmark": "ray_eval",
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 2 cores, onnxruntime "
            f"{onnxruntime.__version__}, ray {ray.__version__}",
            "model": f"MNIST CNN, T={T}, defaults, per-step outputs; SNN and ANN scored together",
            "images": len(x_test),
            "shards": SHARDS,
            "batch": BATCH,
            "engines": rows,
            "accuracy": {"snn": snn_acc, "ann": ann_acc, "per_step": list(steps or ()), "agreement": agree},
            "same_numbers_every_engine": same,
        },
    )


if __name__ == "__main__":
    main()
