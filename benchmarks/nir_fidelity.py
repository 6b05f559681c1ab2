"""NIR export fidelity: the exported graphs run in sinabs (an independent consumer) on MNIST.

For the MNIST CNN of mnist_convert.py (results/mnist_cnn.onnx: AvgPools) and mnist_nets.py's MaxPool
CNN with its last pool an AveragePool (trained here, seeded; its two MaxPools decomposed into
neurons and strided slices), at T = 8, 16, 32 and 64, on the MNIST test images:

- ``icsnn``: the SNN as the CLI converts it by default (θ/2, compensated read-out), run by ONNX
  Runtime; ``icsnn, no compensation``: the same without Alg 3's read-out (NIR has none);
- ``sinabs``: ``icsnn-onnx export --to nir`` of the default SNN (v(0) as a bias v(0)/T, every
  threshold 1), run by sinabs 3.1 with icsnn's neuron semantics (one spike per step, no floor);
  ``sinabs as imported``: the same graph with sinabs' own IAF (MultiSpike, v floor at -θ);
- exactness: an SNN that NIR expresses exactly (``--init zero --no-compensation``), exported and
  run by sinabs: its accuracy, agreement with ONNX Runtime and largest output difference.

    python benchmarks/nir_fidelity.py        # ~15-25 min on 2 CPU cores; needs ../shared/data/mnist

Writes benchmarks/results/nir_fidelity.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mnist_nets
from _common import CACHE, RESULTS, net_axes, run, save_json
from mnist_data import DEFAULT_DIR, load_mnist

import icsnn_onnx
from icsnn_onnx.export.sinabs_run import run_sinabs

TS = (8, 16, 32, 64)
CALIB_SAMPLES = 2000
#: sinabs holds every step of a batch at once ([batch·T, …] per layer): images × steps per call.
#: 500 × 64 took 24 GB on the decomposed-MaxPool CNN and was killed; this fits in ~6 GB.
SINABS_IMAGE_STEPS = 8000
SEED = 0


def cli(*args: str) -> None:
    exe = shutil.which("icsnn-onnx") or sys.exit("icsnn-onnx not on PATH: pip install -e . first")
    subprocess.run([exe, *args, "-q"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def maxpool_ann(train_x: np.ndarray, train_y: np.ndarray) -> Path:
    """mnist_nets' MaxPool CNN with its last pool an AveragePool, trained once (seeded), cached.

    A MaxPool after the last neurons acts once on the read-out in the SNN; NIR would apply it at
    every step (the mean of maxima is not the maximum of means), so the export refuses it. The
    two MaxPools between neurons are decomposed into neurons and strided slices."""
    import torch
    import zoo
    from torch import nn

    path = CACHE / "mnist_maxmaxavg.onnx"
    if not path.exists():
        fit = len(train_x) - mnist_nets.HELD_OUT
        torch.manual_seed(mnist_nets.SEED)
        layers: list[nn.Module] = []
        channels = 1
        for pool in (nn.MaxPool2d(2), nn.MaxPool2d(2), nn.AvgPool2d(2)):
            layers += [nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), pool]
            channels = 32
        net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 3 * 3, 10))
        model = zoo.fit_classifier(net, train_x[:fit], train_y[:fit], mnist_nets.EPOCHS, mnist_nets.SEED)
        torch.onnx.export(
            model.eval(),
            torch.from_numpy(train_x[:1]),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def measure(name: str, ann: Path, calib: Path, x: np.ndarray, y: np.ndarray) -> dict:
    entry: dict = {"ann": accuracy(run(icsnn_onnx.load_model(ann), x, 1000), y), "T": {}}
    for T in TS:
        row: dict = {}
        paths = {}
        for variant, flags in {
            "default": [],  # the defaults when measured (pinned): later flags override
            "no_compensation": ["--no-compensation"],
            "exact": ["--init", "zero", "--no-compensation"],
        }.items():
            snn = CACHE / f"nir_{name}_{variant}_T{T}.onnx"
            pinned = ["--init", "half", "--no-channel-wise", "--threshold", "mse" if T <= 16 else "p99.99"]
            cli(
                "convert",
                str(ann),
                "--calib",
                str(calib),
                "-T",
                str(T),
                "-o",
                str(snn),
                "--force",
                *pinned,
                *flags,
            )
            paths[variant] = snn
            row[f"icsnn_{variant}"] = accuracy(run(icsnn_onnx.load_model(snn), x, 500), y)
        for variant in ("default", "exact"):
            out = CACHE / f"nir_{name}_{variant}_T{T}.nir"
            cli("export", str(paths[variant]), "--to", "nir", "-o", str(out), "--force")
            import nir

            graph = nir.read(out)
            start = time.perf_counter()
            got = run_sinabs(graph, x, T, batch_size=SINABS_IMAGE_STEPS // T)
            row[f"sinabs_{variant}_s"] = round(time.perf_counter() - start, 1)
            row[f"sinabs_{variant}"] = accuracy(got, y)
            if variant == "default":
                row["sinabs_as_imported"] = accuracy(
                    run_sinabs(graph, x, T, faithful=False, batch_size=SINABS_IMAGE_STEPS // T), y
                )
            else:
                ref = run(icsnn_onnx.load_model(paths[variant]), x, 500)
                row["exact_agreement"] = float((got.argmax(1) == ref.argmax(1)).mean())
                row["exact_max_abs_diff"] = float(np.abs(got - ref).max())
        entry["T"][str(T)] = row
        print(name, T, {k: v for k, v in row.items() if not k.endswith("_s")}, flush=True)
    return entry


ROWS = (
    ("icsnn_default", "icsnn-onnx SNN (defaults: θ/2, compensated read-out)"),
    ("icsnn_no_compensation", "icsnn-onnx, no compensation"),
    ("sinabs_default", "**NIR → sinabs** (icsnn's neuron: one spike per step, no floor)"),
    ("sinabs_as_imported", "NIR → sinabs as imported (multi-spike IAF, floor −θ)"),
)


def table(report: dict) -> str:
    ts = list(next(iter(report["nets"].values()))["T"])
    rows = ["| network | run | " + " | ".join(f"T={t}" for t in ts) + " |"]
    rows.append("| --- | --- | " + " | ".join("---" for _ in ts) + " |")
    for net, entry in report["nets"].items():
        title = f"{net}, ANN {100 * entry['ann']:.2f}% ({entry['samples']:,} test images)"
        for i, (key, label) in enumerate(ROWS):
            cells = [f"{100 * entry['T'][t][key]:.2f}%" if t in entry["T"] else "—" for t in ts]
            rows.append(f"| {title if i == 0 else ''} | {label} | " + " | ".join(cells) + " |")
        exact = [
            f"{100 * entry['T'][t]['icsnn_exact']:.2f}% / {100 * entry['T'][t]['sinabs_exact']:.2f}% "
            f"({100 * entry['T'][t]['exact_agreement']:.1f}%)"
            if t in entry["T"]
            else "—"
            for t in ts
        ]
        rows.append(
            "| | v(0) = 0, no compensation: icsnn-onnx / NIR → sinabs (agreement) | "
            + " | ".join(exact)
            + " |"
        )
    return "\n".join(rows)


def plot(report: dict, path: Path) -> None:
    nets = list(report["nets"])
    fig, axes = net_axes(len(nets), 5.5)
    lines = {
        "icsnn_default": ("icsnn-onnx SNN (defaults)", "C0", "-"),
        "icsnn_no_compensation": ("icsnn-onnx, no compensation", "C0", ":"),
        "sinabs_default": ("NIR → sinabs (icsnn neuron)", "C1", "-"),
        "sinabs_as_imported": ("NIR → sinabs as imported", "C1", "--"),
        "icsnn_exact": ("v(0)=0, no comp.: icsnn-onnx", "C2", "-"),
        "sinabs_exact": ("v(0)=0, no comp.: NIR → sinabs", "C2", "--"),
    }
    for ax, net in zip(axes, nets, strict=True):
        entry = report["nets"][net]
        ts = [int(t) for t in entry["T"]]
        for key, (label, color, style) in lines.items():
            ax.plot(
                ts,
                [100 * entry["T"][str(t)][key] for t in ts],
                style,
                color=color,
                marker="o",
                ms=3,
                label=label,
            )
        ax.axhline(100 * entry["ann"], color="k", lw=0.8, label=f"ANN {100 * entry['ann']:.2f}%")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.set_xlabel("T (steps)")
        ax.set_ylabel("MNIST test accuracy (%)")
        ax.set_title(net)
        ax.set_ylim(max(0, min(100 * entry["T"][str(t)][k] for t in ts for k in lines) - 5), 100)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


NET_TITLES = {"cnn": "MNIST CNN (AvgPool)", "maxpool": "MNIST CNN (two MaxPools, decomposed)"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--samples", type=int, default=10_000, help="test images (default all 10k)")
    parser.add_argument(
        "--nets",
        nargs="+",
        choices=list(NET_TITLES),
        default=list(NET_TITLES),
        help="measure these (the others' committed entries are kept)",
    )
    parser.add_argument("--table", action="store_true", help="print README's table of the committed JSON")
    args = parser.parse_args()
    path = RESULTS / "nir_fidelity.json"
    if args.table:
        print(table(json.loads(path.read_text())))
        return
    import nir
    import sinabs

    train_x, train_y, test_x, test_y = load_mnist(args.data_dir)
    x, y = test_x[: args.samples], test_y[: args.samples]
    CACHE.mkdir(exist_ok=True)
    calib = CACHE / "mnist_calib.npz"
    rng = np.random.default_rng(SEED)  # the calibration images of mnist_convert.py
    np.savez(calib, x=train_x[rng.choice(len(train_x), CALIB_SAMPLES, replace=False)])
    anns = {"cnn": RESULTS / "mnist_cnn.onnx"}
    if "maxpool" in args.nets:
        anns["maxpool"] = maxpool_ann(train_x, train_y)  # trained first: a failure costs no measurement
    report = json.loads(path.read_text()) if path.exists() else {"nets": {}}
    report.update(
        {
            "what": "MNIST test accuracy of NIR exports run by sinabs, next to the icsnn-onnx SNN",
            "consumer": f"sinabs {sinabs.__version__} (nir {nir.version}), model built by sinabs.from_nir; "
            "execution order made topological (nirtorch's deprecated load runs fan-in nodes early)",
            "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        }
    )
    for net in args.nets:
        start = time.perf_counter()
        entry = measure(net, anns[net], calib, x, y)
        entry["samples"] = len(x)
        entry["seconds"] = round(time.perf_counter() - start)
        report["nets"][NET_TITLES[net]] = entry
    report["nets"] = {t: report["nets"][t] for t in NET_TITLES.values() if t in report["nets"]}
    save_json(path, report)
    plot(report, RESULTS / "nir_fidelity.png")
    print(f"wrote {path} and .png")


if __name__ == "__main__":
    main()
