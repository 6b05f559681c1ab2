"""Coverage on real architectures from three exporters and the ONNX model zoo.

Every architecture with random weights (see _common.py for the inputs and the centred head):

- torchvision's, exported by torch's legacy (TorchScript, opset 17) and dynamo exporters,
  64×64 inputs (torchvision_zoo.py: needs torchvision installed without dependencies);
- Keras applications exported by tf2onnx (keras_export.py writes them, in its own environment);
- the nine opset-9 model-zoo graphs inside the ``onnx`` package, 224×224, batch 1 (onnx_zoo.py).

For each: converted with the defaults or refused (the reason, as the CLI prints it); conversion
time, node count and ONNX Runtime load time of the default step-major SNN at T = 32; the relative
error ‖y_snn − y_ann‖/‖y_ann‖ of the logits, of the centred logits, and the top-1 agreement with
the ANN (of the centred logits, which vary with the input) at
T = 8, 32 (step-major) and 128 (``--layout loop``), on seeded smooth random images (16; 8 for
the 224×224 zoo graphs), calibrated on 16 others (4).

    pip install -e ".[bench]"
    pip install --no-deps --target benchmarks/.cache/torchvision torchvision==0.28.0
    .tfvenv/bin/python benchmarks/keras_export.py   # optional: the Keras rows
    python benchmarks/architectures.py              # ~40 min on 2 cores
    python benchmarks/architectures.py --table      # README's table from the JSON

Writes benchmarks/results/architectures.{json,png}; ``--only NAME …`` re-measures those rows and
keeps the others.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from _common import CACHE, RESULTS, agreement, centred, relative_error, run, smooth_images, write_json

OUT = RESULTS / "architectures.json"
TS = (8, 32, 128)
LOOP_FROM = 128  # T at which the SNN is compiled with --layout loop (an unrolled graph loads too slowly)

TORCHVISION = (
    ("resnet18", {}),
    ("resnet50", {}),
    ("vgg11_bn", {"size": 224}),  # its adaptive pool to 7×7 exports only from a 7×7 map
    ("mobilenet_v2", {}),
    ("densenet121", {}),
    ("googlenet", {"aux_logits": False, "init_weights": True}),
    ("shufflenet_v2_x1_0", {}),
    ("squeezenet1_1", {}),
    ("mnasnet1_0", {}),
    ("regnet_x_400mf", {}),
    ("efficientnet_b0", {}),
    ("convnext_tiny", {}),
    ("vit_b_16", {"image_size": 64}),
)
KERAS = ("ResNet50", "MobileNetV2", "DenseNet121", "VGG16", "InceptionV3", "EfficientNetB0")


@dataclass(frozen=True)
class Case:
    source: str  # torchvision, keras, onnx-zoo
    exporter: str
    name: str
    load: Callable[[], onnx.ModelProto]
    images: Callable[[int, int], np.ndarray]  # (count, seed) → inputs
    batch: int | None  # the model's fixed batch size, if any
    calib: int
    test: int

    @property
    def key(self) -> str:
        return f"{self.source}/{self.exporter}/{self.name}"


def as_measured(T: int) -> dict:
    """The defaults when the committed table was measured (before docs/method.md §13's): θ/2,
    layer-wise thresholds, mse up to T=16 and p99.99 above. Pinned so the script reproduces it."""
    return {"init": "half", "channel_wise": False, "threshold": "mse" if T <= 16 else "p99.99"}


def cases() -> list[Case]:
    found = []
    for name, kwargs in TORCHVISION:
        kwargs = dict(kwargs)
        size = kwargs.pop("size", 64)
        images = 16 if size <= 64 else 4
        for exporter in ("legacy", "dynamo"):

            def load(
                name: str = name, kwargs: dict = kwargs, exporter: str = exporter, size: int = size
            ) -> onnx.ModelProto:
                import torchvision_zoo

                net = torchvision_zoo.build(name, size, **kwargs)
                return torchvision_zoo.export(net, size, dynamo=exporter == "dynamo")

            found.append(
                Case("torchvision", f"torch {exporter}", name, load, _nchw(size), None, images, images)
            )
    for name in KERAS:
        path = CACHE / "keras" / f"{name}.onnx"
        if path.exists():
            model = onnx.load(path, load_external_data=False)
            side = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
            found.append(
                Case("keras", "tf2onnx", name, lambda p=path: onnx.load(p), _nhwc(side), None, 16, 16)
            )
    import onnx_zoo

    for name in onnx_zoo.NAMES:
        found.append(
            Case(
                "onnx-zoo",
                "model zoo (opset 9)",
                name,
                lambda n=name: onnx_zoo.randomized(n),
                _nchw(224),
                1,
                4,
                8,
            )
        )
    return found


def _nchw(size: int) -> Callable[[int, int], np.ndarray]:
    return lambda n, seed: smooth_images(n, size, seed)


def _nhwc(size: int) -> Callable[[int, int], np.ndarray]:
    return lambda n, seed: smooth_images(n, size, seed, layout="NHWC")


def measure(case: Case) -> dict:
    import onnxruntime as ort

    import icsnn_onnx
    from icsnn_onnx.quiet import ORT_ERRORS_ONLY, ort_log_severity

    row: dict = {"source": case.source, "exporter": case.exporter, "model": case.name}
    stats, calib, test = case.images(16, 3), case.images(case.calib, 1), case.images(case.test, 2)
    loaded = case.load()
    first = loaded.graph.input[0].type.tensor_type.shape.dim[0]
    batch = case.batch or (first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else None)
    case = Case(
        case.source, case.exporter, case.name, lambda: loaded, case.images, batch, case.calib, case.test
    )
    model, mean = centred(loaded, stats, case.batch)
    row["input"] = list(test.shape[1:])
    ann = run(model, test, case.batch)
    row["ann_classes"] = len(set(ann.reshape(len(ann), -1).argmax(1).tolist()))
    row["runs"] = {}
    for T in TS:
        layout = "loop" if T >= LOOP_FROM else "step-major"
        start = time.perf_counter()
        try:
            snn = icsnn_onnx.convert(model, calib, T=T, layout=layout, **as_measured(T))
        except icsnn_onnx.IcsnnError as err:
            row["status"], row["reason"] = "refused", str(err).splitlines()[0]
            return row
        convert_s = time.perf_counter() - start
        start = time.perf_counter()
        with ort_log_severity(ORT_ERRORS_ONLY):
            ort.InferenceSession(snn.SerializeToString(), providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        out = run(snn, test, case.batch)
        row["runs"][str(T)] = {
            "layout": layout,
            "relative_error": relative_error(out + mean, ann + mean),
            "centred_error": relative_error(out, ann),
            "agreement": agreement(out, ann),
            "convert_s": convert_s,
            "nodes": len(snn.graph.node),
            "load_s": load_s,
            "run_s": time.perf_counter() - start,
        }
        row["sites"] = int({p.key: p.value for p in snn.metadata_props}["icsnn.sites"])
        print(
            f"  T={T:<4} {layout:<10} error {row['runs'][str(T)]['relative_error']:.3f} "
            f"(centred {row['runs'][str(T)]['centred_error']:.3f}) "
            f"agreement {row['runs'][str(T)]['agreement']:.2f} ({convert_s:.1f} s + {load_s:.1f} s load)",
            flush=True,
        )
        del snn
        gc.collect()
    row["status"] = "converted"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", help="measure only these models (names), keep the other rows")
    parser.add_argument("--table", action="store_true", help="print README's table from the JSON")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(OUT.read_text())))
        return
    previous = {_key(r): r for r in json.loads(OUT.read_text())["rows"]} if OUT.exists() and args.only else {}
    rows = dict(previous)
    for case in cases():
        if args.only and case.name not in args.only:
            continue
        print(f"{case.key}", flush=True)
        try:
            rows[case.key] = measure(case)
        except Exception as err:  # a benchmark row, not the run, fails
            traceback.print_exc()
            rows[case.key] = {
                "source": case.source,
                "exporter": case.exporter,
                "model": case.name,
                "status": "error",
                "reason": f"{type(err).__name__}: {err}",
            }
        write_json(OUT, {"Ts": list(TS), "loop_from": LOOP_FROM, "rows": list(rows.values())})
        gc.collect()
    plot(json.loads(OUT.read_text()), RESULTS / "architectures.png")
    print(table(json.loads(OUT.read_text())))


def _key(row: dict) -> str:
    return f"{row['source']}/{row['exporter']}/{row['model']}"


def table(report: dict) -> str:
    Ts = report["Ts"]
    head = ["source", "model", "exporter", "sites", "convert / load (T=32)", "nodes (T=32)"]
    head += [f"T={T}: error (centred), agreement" for T in Ts]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in report["rows"]:
        cells = [row["source"], row["model"], row["exporter"]]
        if row["status"] != "converted":
            reason = row.get("reason", "").replace("|", "/")
            cells += [f"**{row['status']}**: {reason[:160]}{'…' if len(reason) > 160 else ''}", "", ""]
            cells += [""] * len(Ts)
        else:
            r32 = row["runs"]["32"]
            cells += [
                str(row["sites"]),
                f"{r32['convert_s']:.1f} s / {r32['load_s']:.1f} s",
                f"{r32['nodes']:,}",
            ]
            cells += [_run_cell(row["runs"][str(T)]) for T in Ts]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run_cell(run: dict) -> str:
    return f"{run['relative_error']:.3f} ({run['centred_error']:.2f}), {100 * run['agreement']:.0f}%"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    colors = {"torchvision": "tab:blue", "keras": "tab:orange", "onnx-zoo": "tab:green"}
    for row in report["rows"]:
        if row["status"] != "converted":
            continue
        Ts = [int(t) for t in row["runs"]]
        errors = [row["runs"][str(t)]["relative_error"] for t in Ts]
        style = "--" if "dynamo" in row["exporter"] else "-"
        ax.plot(Ts, errors, style, marker="o", color=colors[row["source"]], alpha=0.6, lw=1)
        ax.annotate(row["model"], (Ts[-1], errors[-1]), fontsize=6, alpha=0.7)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("T (time steps)")
    ax.set_ylabel("relative error of the logits vs the ANN")
    ax.set_title(
        "Real architectures, random weights: SNN error vs T\n(blue torchvision, dashed: dynamo export; orange Keras/tf2onnx; green ONNX model zoo)"
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
