"""Plots of a spike report: files a person would rather look at than read (needs matplotlib,
``pip install "icsnn-onnx[plots]"``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from icsnn_onnx.analysis.report import Report
from icsnn_onnx.errors import IcsnnError


def report_plots(report: Report, folder: Path) -> list[Path]:
    """Write the report's plots to ``folder``; return their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise IcsnnError('plots need matplotlib: pip install "icsnn-onnx[plots]"') from None
    written = []
    names = [layer.name for layer in report.layers]
    short = [_short(n) for n in names]
    positions = np.arange(len(names))

    if report.accuracy_by_t or report.agreement_by_t:
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = np.arange(1, report.T + 1)
        if report.accuracy_by_t:
            ax.plot(
                steps, 100 * np.array(report.accuracy_by_t), "o-", ms=3, label="SNN accuracy after t steps"
            )
            if report.ann_accuracy is not None:
                ax.axhline(100 * report.ann_accuracy, color="k", ls="--", label="ANN accuracy")
        if report.agreement_by_t:
            ax.plot(steps, 100 * np.array(report.agreement_by_t), "s:", ms=3, label="same class as the ANN")
        ax.set(xlabel="t (steps)", ylabel="%", title=f"Accuracy after t steps ({report.samples} samples)")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, folder / "accuracy_vs_t.png"))

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    ax.bar(positions, [layer.firing_rate for layer in report.layers], color="tab:blue", label="firing rate")
    ax.bar(
        positions,
        [layer.never_fired for layer in report.layers],
        width=0.3,
        color="tab:gray",
        alpha=0.7,
        label="never fired (fraction)",
    )
    ax.set(ylabel="spikes per neuron per step", title=f"Firing rate per layer (T={report.T})")
    _layer_axis(ax, positions, short)
    ax.legend()
    written.append(_save(fig, folder / "firing_rate.png"))

    synapses = report.synapses
    if synapses:
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(synapses)), 4))
        where = np.arange(len(synapses))
        ax.bar(where - 0.2, [s.sops for s in synapses], 0.4, label="SNN: synaptic operations")
        ax.bar(
            where - 0.2,
            [s.snn_macs for s in synapses],
            0.4,
            bottom=[s.sops for s in synapses],
            label="SNN: MACs (dense layers)",
            color="tab:red",
        )
        ax.bar(where + 0.2, [s.ann_macs for s in synapses], 0.4, label="ANN: MACs", color="tab:gray")
        ax.set_yscale("log")
        tallest = max(max(s.sops + s.snn_macs, s.ann_macs) for s in synapses)
        if tallest > 0:  # log-scaled stacked bars do not autoscale to their tops
            ax.set_ylim(top=3 * tallest)
        ax.set(ylabel="operations per sample", title="Synaptic operations vs multiply-accumulates")
        _layer_axis(ax, where, [_short(s.name) for s in synapses])
        ax.legend(fontsize=8)
        written.append(_save(fig, folder / "sops_vs_macs.png"))

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    data = [_expand(layer.first_spike_histogram, report.T) for layer in report.layers]
    if any(len(d) for d in data):
        ax.boxplot(
            [d if len(d) else [np.nan] for d in data], positions=positions, widths=0.6, showfliers=False
        )
    ax.plot(positions, [layer.first_spike_mean or np.nan for layer in report.layers], "r.", label="mean")
    ax.set(ylabel="step of the first spike", title="First-spike latency per layer")
    _layer_axis(ax, positions, short)
    ax.legend()
    written.append(_save(fig, folder / "first_spike_latency.png"))
    return written


def _expand(histogram: list[int], T: int) -> np.ndarray:
    """Samples at the bins' first steps, for a boxplot of the histogram (one bin per step up to
    T=64: then exactly the steps)."""
    edges = np.linspace(1, T + 1, len(histogram) + 1)  # the report's bins
    centres = np.floor(edges[:-1])
    counts = np.asarray(histogram)
    if counts.sum() > 20000:  # a boxplot needs the shape, not every neuron
        counts = np.round(counts * 20000 / counts.sum()).astype(int)
    return np.repeat(centres, counts)


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _layer_axis(ax: object, positions: np.ndarray, labels: list[str]) -> None:
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.grid(alpha=0.3, axis="y")


def _save(fig: object, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
