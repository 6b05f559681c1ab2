"""Deep networks: how the SNN's error falls with T, and where it comes from (docs/method.md §10).

Random-weight torchvision networks (torchvision_zoo.py, 64×64 inputs, logits centred as in
_common.py; ResNet-50 also with exact BN statistics, as a trained network holds them) and the
model zoo's ResNet-50 (224×224, exact BN statistics), converted with ``--threshold p99.99 --init
half`` (the defaults above T = 16) in the loop layout at T = 32 … 1024: relative error of the raw
and the centred logits and top-1 agreement; and, at T = 64 and T = 1024, the per-layer trace of
``icsnn-onnx diagnose`` (error of rate × θ against the ANN's activation, of the mean input
current, the error each layer adds itself, and the fraction of overfired neurons).

    pip install --no-deps --target benchmarks/.cache/torchvision torchvision==0.28.0
    python benchmarks/convergence.py          # ~40 min on 2 cores

Writes benchmarks/results/convergence.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnx
from _common import RESULTS, agreement, centred, relative_error, run, smooth_images, write_json
from real_architectures import architecture

OUT = RESULTS / "convergence.json"
TS = (32, 64, 128, 256, 512, 1024)
TRACE_TS = (64, 1024)
MODELS = {  # name → (size, test images, batch); "zoo X" is the model zoo's X
    "resnet18": (64, 8, None),
    "resnet50": (64, 8, None),
    "resnet50 exact-BN": (64, 8, None),
    "mobilenet_v2": (64, 8, None),
    "densenet121": (64, 8, None),
    "zoo resnet50": (224, 2, 1),
}


def load(name: str) -> onnx.ModelProto:
    size, _, _ = MODELS[name]
    if name.startswith("zoo "):
        return architecture(name)
    return architecture(name.split()[0], size, exact_bn=name.endswith("exact-BN"))


def measure(name: str) -> dict:
    import icsnn_onnx
    from icsnn_onnx.analysis.diagnose import diagnose
    from icsnn_onnx.data import Dataset

    size, images, batch = MODELS[name]
    model, mean = centred(load(name), smooth_images(16, size, 3), batch)
    calib, test = smooth_images(16 if batch is None else 4, size, 1), smooth_images(images, size, 2)
    ann = run(model, test, batch)
    record: dict = {"input": [3, size, size], "test_images": images, "runs": {}, "traces": {}}
    for T in TS:
        start = time.perf_counter()
        snn = icsnn_onnx.convert(model, calib, T=T, threshold="p99.99", init="half", layout="loop")
        out = run(snn, test, batch)
        record["runs"][str(T)] = {
            "relative_error": relative_error(out + mean, ann + mean),
            "centred_error": relative_error(out, ann),
            "agreement": agreement(out, ann),
            "seconds": time.perf_counter() - start,
        }
        print(f"  {name} T={T}: {record['runs'][str(T)]}", flush=True)
        if T in TRACE_TS:
            d = diagnose(
                snn, model, Dataset({model.graph.input[0].name: test}), batch_size=batch or 8, provider="cpu"
            )
            record["traces"][str(T)] = [
                {
                    "layer": layer.name,
                    "output_error": layer.by_step[T].output_error,
                    "input_error": layer.by_step[T].input_error,
                    "local_error": layer.by_step[T].local_error,
                    "local_error_step_1": layer.by_step[1].local_error,
                    "overfired": layer.by_step[T].overfired,
                    "above_threshold": layer.above_threshold,
                }
                for layer in d.layers
            ]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS), help="re-measure these, keep the others")
    args = parser.parse_args()
    report = json.loads(OUT.read_text()) if OUT.exists() and args.only else {"Ts": list(TS), "models": {}}
    for name in MODELS:
        if args.only and name not in args.only:
            continue
        print(name, flush=True)
        report["models"][name] = measure(name)
        write_json(OUT, report)
    plot(json.loads(OUT.read_text()))


def plot(report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for i, (name, record) in enumerate(report["models"].items()):
        color = f"C{i}"
        Ts = [int(t) for t in record["runs"]]
        left.plot(Ts, [record["runs"][str(t)]["relative_error"] for t in Ts], "o-", color=color, label=name)
        for T, style in (("64", ":"), ("1024", "-")):
            trace = record["traces"].get(T)
            if trace:
                right.plot(
                    [layer["local_error"] for layer in trace], style, color=color, label=f"{name} T={T}"
                )
    Ts = np.array(report["Ts"], float)
    left.plot(Ts, 0.5 * Ts[0] / Ts, "k--", lw=0.8, label="∝ 1/T")
    left.plot(Ts, 0.5 * np.sqrt(Ts[0] / Ts), "k:", lw=0.8, label="∝ 1/√T")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="T",
        ylabel="relative error vs the ANN",
        title="Output error vs T (loop layout)",
    )
    right.set(
        yscale="log",
        xlabel="neuron layer (graph order)",
        ylabel="local error",
        title="Error each layer adds (diagnose)",
    )
    left.legend(fontsize=6)
    right.legend(fontsize=6)
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "convergence.png", dpi=120)


if __name__ == "__main__":
    main()
