"""The analysis commands, ``diagnose`` and ``report``: run the library's measures, print them."""

from __future__ import annotations

import argparse
import sys

from icsnn_onnx.cli.common import fixed_of, progress_factory
from icsnn_onnx.errors import IcsnnError, OptionError


def diagnose_command(args: argparse.Namespace) -> int:
    import json

    from icsnn_onnx.analysis.diagnose import diagnose
    from icsnn_onnx.data import load_dataset
    from icsnn_onnx.runtime import Session

    fixed = fixed_of(args)
    specs = Session(args.ann, provider="cpu", fixed=fixed).inputs
    data = load_dataset(args.data, specs, what=str(args.data)).head(args.samples)
    d = diagnose(
        args.snn,
        args.ann,
        data,
        args.steps,
        args.batch_size,
        args.provider,
        progress_factory(args.quiet),
        fixed=fixed,
    )
    if args.json:
        print(json.dumps(d.as_dict(), indent=2))
        return 0

    def pct(x: float | None) -> str:
        return "    -" if x is None else f"{100 * x:5.1f}"

    def err(x: float | None) -> str:
        return "     -" if x is None else f"{x:6.3f}"

    agree = d.agreement.get(d.T)
    print(
        f"{args.snn}: T={d.T}, {d.samples} samples; output relative error {err(d.output_error.get(d.T)).strip()}"
        + (f", agreement {100 * agree:.2f}%" if agree is not None else "")
    )
    if len(d.output_error) > 1:
        print(
            "  output error after t steps: " + "  ".join(f"{t}: {e:.3f}" for t, e in d.output_error.items())
        )
    width = max(len(layer.name) for layer in d.layers)
    steps = "".join(f"{'t=' + str(t):>7}" for t in d.steps)
    print(f"{'layer':<{width}} {steps}  | at T: input  local  sat%  over%  >θ%")
    for layer in d.layers:
        row = "".join(f" {err(layer.by_step[t].output_error)}" for t in d.steps)
        last = layer.by_step[d.T] if d.T in layer.by_step else layer.by_step[d.steps[-1]]
        print(
            f"{layer.name:<{width}} {row}  | {err(last.input_error)} {err(last.local_error)} "
            f"{pct(last.saturated)} {pct(last.overfired)} {pct(layer.above_threshold)}"
        )
    print("error: ‖rate·θ − ANN activation‖/‖ANN activation‖ after t steps; input: of the mean input")
    print("current; local: what the layer adds to its input; sat: fired every step; over: fired with")
    print("v(T) < 0; >θ: ANN activations above θ (docs/method.md §10)")
    return 0


def report_command(args: argparse.Namespace) -> int:
    import json

    from icsnn_onnx.analysis.report import EnergyModel, report
    from icsnn_onnx.data import load_dataset
    from icsnn_onnx.model_io import check_output
    from icsnn_onnx.runtime import Session

    if args.output is not None:  # checked before any work; created (one level) when written
        if args.output.exists() and not args.output.is_dir():
            raise OptionError(f"{args.output}: not a directory")
        target = args.output / "report.json" if args.output.is_dir() else args.output
        check_output(target, force=True, inputs=(args.snn, args.data, args.ann))
    specs = Session(args.snn, provider="cpu", fixed=fixed_of(args)).inputs
    data = load_dataset(args.data, specs, what=str(args.data)).head(args.samples)
    energy = (
        EnergyModel(
            e_ac=args.e_ac * 1e-12,
            e_mac=args.e_mac * 1e-12,
            source="pJ per operation given on the command line",
        )
        if (args.e_ac, args.e_mac) != (0.9, 4.6)
        else EnergyModel()
    )
    r = report(
        args.snn,
        data,
        args.ann,
        args.batch_size,
        args.provider,
        energy,
        progress_factory(args.quiet),
        fixed=fixed_of(args),
    )
    record = r.as_dict()
    if args.output is not None:
        from icsnn_onnx.model_io import save_text

        args.output.mkdir(exist_ok=True)
        save_text(json.dumps(record, indent=2) + "\n", args.output / "report.json")
        try:
            from icsnn_onnx.analysis.plots import report_plots

            plots = report_plots(r, args.output)
        except IcsnnError as err:
            plots = []
            print(f"plots not written: {err}", file=sys.stderr)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    _print_report(r)
    if args.output is not None:
        print(f"wrote {args.output / 'report.json'}" + "".join(f", {p.name}" for p in plots))
    return 0


def _print_report(r: object) -> None:
    e = r.energy
    line = f"{r.samples} samples, T={r.T}"
    if r.accuracy is not None:
        line += f"; SNN accuracy {100 * r.accuracy:.2f}%"
    if r.ann_accuracy is not None:
        line += f", ANN {100 * r.ann_accuracy:.2f}%"
    print(line)
    if r.accuracy_by_t:
        marks = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, r.T} & set(range(1, r.T + 1)))
        print(
            "  accuracy after t steps: "
            + "  ".join(f"t={t}: {100 * r.accuracy_by_t[t - 1]:.2f}%" for t in marks)
        )
    if r.agreement_by_t:
        print(f"  same class as the ANN after T: {100 * r.agreement_by_t[-1]:.2f}%")
    if r.spiking:
        print(f"spiking: {r.spiking}")
    width = max(len(layer.name) for layer in r.layers)
    graded = any(layer.mean_level is not None and layer.mean_level > 1 for layer in r.layers)
    level_head = "  level" if graded else ""  # units of θ per spike, where spikes are graded
    print(
        f"{'neuron layer':<{width}}  neurons   rate  silent%  always%  1st spike  v(T)/θ   corr{level_head}"
    )
    for layer in r.layers:
        first = "-" if layer.first_spike_mean is None else f"{layer.first_spike_mean:.1f}"
        residual = "-" if layer.residual_mean is None else f"{layer.residual_mean:+.2f}"
        corr = "-" if layer.correlation is None else f"{layer.correlation:.3f}"
        level = ("-" if layer.mean_level is None else f"{layer.mean_level:.2f}") if graded else ""
        print(
            f"{layer.name:<{width}}  {layer.neurons:>7}  {layer.firing_rate:.3f}  {100 * layer.never_fired:7.1f}"
            f"  {100 * layer.always_fired:7.1f}  {first:>9}  {residual:>6}  {corr:>5}"
            + (f"  {level:>5}" if graded else "")
        )
    width = max([len(s.name) for s in r.synapses] + [14])
    print(f"{'synaptic layer':<{width}}  kind  SNN SOPs/sample  SNN MACs/sample  ANN MACs/sample")
    for s in r.synapses:
        print(f"{s.name:<{width}}  {s.kind:<4}  {s.sops:15.4g}  {s.snn_macs:15.4g}  {s.ann_macs:15.4g}")
    if r.compensated:
        width = max(len(u.name) for u in r.compensated)
        print(
            f"{'compensated unit':<{width}}  ops                  MACs/step  other ops/step  dense ops/sample"
        )
        for u in r.compensated:
            ops = "+".join(u.ops)[:20]
            print(
                f"{u.name:<{width}}  {ops:<20} {u.macs_per_step:10.4g}  {u.other_per_step:14.4g}  {u.per_sample:16.4g}"
            )
    print(
        f"energy per sample: SNN {_joules(e['snn_joules_per_sample'])} "
        f"({e['sops_per_sample']:.4g} SOPs"
        + (f", {e['graded_sops_per_sample']:.4g} of them graded" if e.get("graded_sops_per_sample") else "")
        + f", {e['snn_macs_per_sample']:.4g} MACs), "
        f"ANN {_joules(e['ann_joules_per_sample'])} ({e['ann_macs_per_sample']:.4g} MACs); "
        f"neuron updates apart: {e['neuron_updates_per_sample']:.4g}"
    )
    print(f"convention: {e['convention']} {e['source']}.")
    for note in r.notes:
        print(f"note: {note}")


def _joules(value: float) -> str:
    """An energy in the SI unit that keeps 1-999 before the point (16.0 µJ, not 1.6e+04 nJ)."""
    for unit, scale in (("J", 1.0), ("mJ", 1e-3), ("µJ", 1e-6), ("nJ", 1e-9)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-12:.3g} pJ"
