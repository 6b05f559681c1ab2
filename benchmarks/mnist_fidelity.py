"""MNIST fidelity at low latency: icsnn-onnx's settings vs SpikingJelly's ann2snn recipes.

Trains three small CNNs on MNIST with torch on the CPU (seeded; 57.5k training images, the last 2.5k
of the training set held out for choosing settings):

- ``relu_avgpool``: 3 × (conv3×3-32, BatchNorm, ReLU, AvgPool2) + Linear
- ``qcfs_avgpool``: the same with a QCFS activation (L = 4 levels, trainable λ per layer)
- ``relu_maxpool``: 3 × (conv3×3-32, BatchNorm, ReLU, MaxPool2) + Linear

Each is exported to ONNX by torch and converted by icsnn-onnx with every setting below, and run
by a bare ``onnxruntime.InferenceSession``; accuracy at T ∈ {1, 2, 4, 8, 16, 32} on the held-out
split and on the 10k test images. Settings: init half/zero/calibrated × compensation on/off
(+ least-squares thresholds for the compiled T; × MaxPool policy decompose/gate/avg for the
MaxPool net). "ours" at each T is the setting with the best held-out accuracy at that T (never
chosen on the test set).

SpikingJelly 2.0.0 (benchmark-only: ``pip install --no-deps spikingjelly==2.0.0`` and
``pip install loguru requests scipy``) converts the very same trained torch weights with
``RateCodingRecipe(mode="99.9%")``, ``RateCodingRecipe(mode="99.9%", channel_wise=True,
half_threshold=True)`` and ``LocalThresholdBalancingRecipe``, calibrated on the same images,
and runs T single steps, averaging the outputs. Its converter replaces ``nn.ReLU`` modules only,
so for the QCFS net it gets a twin with ``nn.ReLU`` in place of QCFS (same weights).

    python benchmarks/mnist_fidelity.py            # ~65 min on 2 CPU cores
    python benchmarks/mnist_fidelity.py --table    # README's table from the JSON

Writes benchmarks/results/mnist_fidelity.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo
from _common import CACHE, RESULTS, net_axes, plain_accuracy, save_json
from mnist_data import DEFAULT_DIR, load_mnist
from mnist_nets import CALIB_SAMPLES, EPOCHS, HELD_OUT, SEED, build, train

import icsnn_onnx
from icsnn_onnx.options import threshold_depends_on_T

TS = (1, 2, 4, 8, 16, 32)
NETS = ("relu_avgpool", "qcfs_avgpool", "relu_maxpool")
SJ_RECIPES = ("rate 99.9%", "rate 99.9% channel-wise half-threshold", "local threshold balancing")


def relu_twin(model: nn.Sequential) -> nn.Sequential:
    """The same weights with nn.ReLU in place of QCFS (what SpikingJelly's converter can take)."""
    twin = build("relu_avgpool")
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith(".lam")})
    return twin.eval()


def settings(net: str) -> list[dict]:
    """The conversion settings tried on ``net`` (the held-out split picks one per T).

    Every init × compensation with a 99.99th-percentile threshold (the ablation), plus
    least-squares thresholds for the compiled T (``--threshold mse``), which small T needs. QCFS
    sites take θ from their λ, so thresholds are moot there. Every setting names its threshold,
    so the default (``auto``) never decides what a row means.
    """
    return [{"threshold": "p99.99", **setting} for setting in _grid(net)]


def _grid(net: str) -> list[dict]:
    mse_cw = {"threshold": "mse", "channel_wise": True}
    if net == "relu_maxpool":
        return [
            {"init": init, "compensation": True, "maxpool": policy, **extra}
            for policy in ("decompose", "gate", "avg")
            for init, extra in (("half", {}), ("calibrated", mse_cw))
        ]
    grid = [
        {"init": init, "compensation": comp}
        for init in ("half", "zero", "calibrated")
        for comp in (True, False)
    ]
    if net == "relu_avgpool":
        grid += [
            {"init": "half", "compensation": True, **mse_cw},
            {"init": "calibrated", "compensation": True, "threshold": "mse"},
            {"init": "calibrated", "compensation": True, **mse_cw},
        ]
    return grid


def per_T(setting: dict) -> bool:
    """Whether the model must be compiled for each T (v(0) or θ depend on it)."""
    return setting["init"] == "calibrated" or threshold_depends_on_T(setting["threshold"])


def label(setting: dict) -> str:
    parts = [f"init {setting['init']}", "compensation" if setting["compensation"] else "no compensation"]
    threshold = setting.get("threshold", "p99.99")
    parts.append(f"threshold {threshold}{' channel-wise' if setting.get('channel_wise') else ''}")
    if "maxpool" in setting:
        parts.append(f"maxpool {setting['maxpool']}")
    return ", ".join(parts)


def accuracies(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, per_step: bool) -> dict[int, float]:
    """Accuracy at each T in TS (from the per-step output when there is one)."""
    output = "logits_per_step" if per_step else "logits"
    (acc,) = plain_accuracy(model, x, y, [output], "image", threads=2)
    if per_step:
        return {T: float(acc[T - 1]) for T in TS}
    return {0: float(acc[0])}


def run_ours(ann: Path, calib: np.ndarray, val: tuple, test: tuple, net: str) -> list[dict]:
    runs = []
    for setting in settings(net):
        entry = {"setting": setting, "label": label(setting), "val": {}, "test": {}, "convert_s": {}}
        if per_T(setting):
            for T in TS:
                start = time.perf_counter()
                snn = icsnn_onnx.convert(ann, calib, T=T, **setting)
                entry["convert_s"][T] = round(time.perf_counter() - start, 2)
                entry["val"][T] = accuracies(snn, *val, per_step=False)[0]
                entry["test"][T] = accuracies(snn, *test, per_step=False)[0]
        else:  # nothing depends on T: one model, read after each t steps
            start = time.perf_counter()
            snn = icsnn_onnx.convert(ann, calib, T=max(TS), per_step=True, **setting)
            entry["convert_s"][max(TS)] = round(time.perf_counter() - start, 2)
            entry["val"] = accuracies(snn, *val, per_step=True)
            entry["test"] = accuracies(snn, *test, per_step=True)
        print(
            f"  {net} {entry['label']}: test "
            + " ".join(f"T{T}={100 * a:.2f}" for T, a in entry["test"].items()),
            flush=True,
        )
        runs.append(entry)
    return runs


def run_spikingjelly(
    model: nn.Sequential, calib: np.ndarray, test: tuple, recipe_name: str, net: str
) -> dict:
    warnings.simplefilter("ignore")
    from spikingjelly.activation_based import ann2snn, functional

    source = relu_twin(model) if net == "qcfs_avgpool" else model
    data = torch.from_numpy(calib)
    loader = [(data[i : i + 100], torch.zeros(len(data[i : i + 100]))) for i in range(0, len(data), 100)]
    if recipe_name == "rate 99.9%":
        recipe = ann2snn.RateCodingRecipe(dataloader=loader, mode="99.9%")
    elif recipe_name == "rate 99.9% channel-wise half-threshold":
        recipe = ann2snn.RateCodingRecipe(
            dataloader=loader,
            mode="99.9%",
            channel_wise=True,
            half_threshold=True,
            pre_spike_maxpool=net == "relu_maxpool",
        )
    else:
        recipe = ann2snn.LocalThresholdBalancingRecipe(dataloader=loader)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    snn = ann2snn.FXConverter(recipe=recipe, device="cpu").convert(_copy(source)).eval()
    convert_s = time.perf_counter() - start
    x, y = test
    correct = np.zeros(max(TS))
    with torch.no_grad():
        for begin in range(0, len(x), 500):
            functional.reset_net(snn)
            batch = torch.from_numpy(x[begin : begin + 500])
            total = None
            for t in range(max(TS)):
                out = snn(batch)
                total = out if total is None else total + out
                correct[t] += (total.argmax(-1).numpy() == y[begin : begin + 500]).sum()
    acc = correct / len(x)
    return {
        "recipe": recipe_name,
        "test": {T: float(acc[T - 1]) for T in TS},
        "convert_s": round(convert_s, 2),
    }


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    parser.add_argument("--no-spikingjelly", action="store_true")
    parser.add_argument("--table", action="store_true", help="print README's table from the JSON")
    args = parser.parse_args()
    path = RESULTS / "mnist_fidelity.json"
    if args.table:
        print(table(json.loads(path.read_text())))
        return
    torch.set_num_threads(2)
    CACHE.mkdir(parents=True, exist_ok=True)
    train_x, train_y, test_x, test_y = load_mnist(args.data_dir)
    fit_x, fit_y = train_x[:-HELD_OUT], train_y[:-HELD_OUT]
    val = (train_x[-HELD_OUT:], train_y[-HELD_OUT:])
    test = (test_x, test_y)
    rng = np.random.default_rng(SEED)
    calib = fit_x[rng.choice(len(fit_x), CALIB_SAMPLES, replace=False)]

    report = json.loads(path.read_text()) if path.exists() else {}
    report.setdefault("nets", {})
    for net in args.nets:
        model, train_s = train(net, fit_x, fit_y)
        ann_path = CACHE / f"mnist_{net}.onnx"
        zoo.export(model, fit_x.shape[1:], str(ann_path))
        ann = onnx.load(ann_path)
        ann_val = accuracies(ann, *val, per_step=False)[0]
        ann_test = accuracies(ann, *test, per_step=False)[0]
        print(
            f"{net}: trained in {train_s:.0f} s; ANN held-out {100 * ann_val:.2f}%, test {100 * ann_test:.2f}%",
            flush=True,
        )
        ours = run_ours(ann_path, calib, val, test, net)
        sj = []
        if not args.no_spikingjelly:
            for recipe in SJ_RECIPES:
                result = run_spikingjelly(model, calib, test, recipe, net)
                print(
                    f"  {net} SpikingJelly {recipe}: "
                    + " ".join(f"T{T}={100 * a:.2f}" for T, a in result["test"].items()),
                    flush=True,
                )
                sj.append(result)
        report["nets"][net] = summarize(net, train_s, ann_val, ann_test, ours, sj)
        report.update(
            benchmark="mnist_fidelity",
            T=list(TS),
            data={
                "train": len(fit_x),
                "held_out": HELD_OUT,
                "test": len(test_x),
                "calib_samples": CALIB_SAMPLES,
            },
            train={"epochs": EPOCHS, "seed": SEED, "optimizer": "Adam + OneCycle, batch 128"},
            convert={
                "threshold": "per setting: p99.99 or mse (ReLU), λ (QCFS)",
                "encoding": "direct",
                "layout": "step-major",
                "calib_samples_for_init": 256,
            },
            selection="per T, the icsnn-onnx setting with the best held-out accuracy (last 2.5k training images)",
            runtime=f"onnxruntime {ort.__version__} CPUExecutionProvider (plain InferenceSession)",
            spikingjelly="2.0.0, FXConverter, single-step, outputs averaged over T steps",
            machine=f"{platform.machine()}, 2 threads, python {platform.python_version()}, torch {torch.__version__}",
        )
        report["nets"] = {k: report["nets"][k] for k in NETS if k in report["nets"]}
        save_json(path, report)
    report = json.loads(path.read_text())  # T keys as the JSON spells them
    plot(report, RESULTS / "mnist_fidelity.png")
    print(table(report))


def summarize(
    net: str, train_s: float, ann_val: float, ann_test: float, ours: list[dict], sj: list[dict]
) -> dict:
    selected = {}
    for T in TS:
        best = max(ours, key=lambda r: (r["val"][T], -ours.index(r)))
        selected[T] = {"label": best["label"], "val": best["val"][T], "test": best["test"][T]}
    sj_best = {T: max((r["test"][T] for r in sj), default=None) for T in TS}
    entry = {
        "train_seconds": round(train_s, 1),
        "ann": {"val": ann_val, "test": ann_test},
        "ours_selected": selected,
        "ours_all": ours,
        "spikingjelly": sj,
        "spikingjelly_best_test": sj_best,
    }
    if net == "relu_avgpool":
        gaps = {T: ann_test - selected[T]["test"] for T in TS}
        entry["targets"] = {
            "at_least_spikingjelly_best_at_every_T": all(
                sj_best[T] is None or selected[T]["test"] >= sj_best[T] for T in TS
            ),
            "within_0.5_points_at_T4": gaps[4] <= 0.005,
            "within_0.1_points_at_T8": gaps[8] <= 0.001,
            "points_below_ann": {T: round(100 * g, 2) for T, g in gaps.items()},
        }
    if net == "qcfs_avgpool":
        gap = ann_test - selected[4]["test"]
        entry["targets"] = {
            "within_0.3_points_at_T4": gap <= 0.003,
            "points_below_ann_at_T4": round(100 * gap, 2),
        }
    if net == "relu_maxpool":
        small = [T for T in TS if T <= 8]
        by_policy: dict[str, float] = {}
        for r in ours:
            policy = r["setting"]["maxpool"]
            mean = float(np.mean([r["val"][T] for T in small]))
            by_policy[policy] = max(by_policy.get(policy, 0.0), mean)
        entry["maxpool_policy_mean_held_out_T_le_8"] = by_policy
        entry["best_maxpool_policy"] = max(by_policy, key=by_policy.get)
    return entry


NET_TITLES = {
    "relu_avgpool": "ReLU CNN (BN, AvgPool)",
    "qcfs_avgpool": "QCFS CNN (L=4, BN, AvgPool)",
    "relu_maxpool": "ReLU CNN (BN, MaxPool)",
}


def table(report: dict) -> str:
    ts = report["T"]
    head = "| network | | ANN | " + " | ".join(f"T={T}" for T in ts) + " |"
    rows = [head, "| --- | --- | --- | " + " | ".join("---" for _ in ts) + " |"]
    for net, entry in report["nets"].items():
        ann = f"{100 * entry['ann']['test']:.2f}%"
        ours = entry["ours_selected"]
        rows.append(
            f"| {NET_TITLES[net]} | **icsnn-onnx** | {ann} | "
            + " | ".join(f"**{100 * ours[str(T)]['test']:.2f}%**" for T in ts)
            + " |"
        )
        for r in entry["spikingjelly"]:
            rows.append(
                f"| | SpikingJelly {r['recipe']} | | "
                + " | ".join(f"{100 * r['test'][str(T)]:.2f}%" for T in ts)
                + " |"
            )
    return "\n".join(rows)


def plot(report: dict, path: Path) -> None:
    nets = list(report["nets"])
    fig, axes = net_axes(len(nets), 5.0)
    for ax, net in zip(axes, nets, strict=True):
        entry = report["nets"][net]
        ts = [int(t) for t in entry["ours_selected"]]
        ax.plot(
            ts, [100 * entry["ours_selected"][str(t)]["test"] for t in ts], "-o", lw=2, label="icsnn-onnx"
        )
        for r in entry["spikingjelly"]:
            ax.plot(ts, [100 * r["test"][str(t)] for t in ts], "--", marker=".", label=f"SJ {r['recipe']}")
        ax.axhline(100 * entry["ann"]["test"], color="k", lw=1, label="ANN")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.set_ylim(0, 100)
        ax.set_xlabel("time steps T")
        ax.set_ylabel("MNIST test accuracy (%)")
        ax.set_title(NET_TITLES[net])
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
