"""One function per command: call the library, print the result. The only code that prints."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from icsnn_onnx.contract import INIT_METHOD_KEY, LAYOUT_KEY, SITES_KEY, THRESHOLD_METHOD_KEY
from icsnn_onnx.engine import RayEngine
from icsnn_onnx.errors import DataError, IcsnnError, OptionError
from icsnn_onnx.options import ConversionOptions
from icsnn_onnx.progress import Progress, ProgressFactory, silent


def _progress_factory(quiet: bool) -> ProgressFactory:
    if quiet:
        return silent
    from tqdm import tqdm

    def factory(total: int, desc: str) -> Progress:
        return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False, disable=None)

    return factory


def _options(args: argparse.Namespace, **overrides: object) -> ConversionOptions:
    """The one record of what to build, from the CLI's fields of the same names."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(ConversionOptions) if hasattr(args, f.name)
    }
    try:
        return ConversionOptions(**{**values, **overrides})
    except ValueError as err:
        raise OptionError(str(err)) from None


def _engine(args: argparse.Namespace) -> RayEngine | None:
    """``--engine ray`` and its settings as the library's record; ``None`` for the local engine."""
    from icsnn_onnx.engine import ray_module

    if args.engine == "local":
        given = [
            f"--{f.name.replace('_', '-')}"
            for f in dataclasses.fields(RayEngine)
            if getattr(args, f.name) != getattr(RayEngine(), f.name)
        ]
        if given:
            raise OptionError(f"{', '.join(given)} only apply with --engine ray")
        return None
    ray_module()  # the extra's error before any work
    return RayEngine(args.address, args.workers, args.gpus_per_worker)


def _convert(args: argparse.Namespace) -> int:
    from icsnn_onnx.converter import convert
    from icsnn_onnx.model_io import check_output, save_model

    options = _options(args)
    output = args.output or args.model.with_name(args.model.name.removesuffix(".onnx") + ".snn.onnx")
    inputs = (args.model, args.calib)
    check_output(output, args.force, inputs)  # fail before any work
    engine = _engine(args)
    model = convert(
        args.model, args.calib, options=options, progress=_progress_factory(args.quiet), engine=engine
    )
    save_model(model, output, force=args.force, inputs=inputs)
    meta = {p.key: p.value for p in model.metadata_props}
    print(
        f"{args.model} -> {output}: {meta[SITES_KEY]} activation site(s) as IF neurons, "
        f"T={options.T}, init={meta[INIT_METHOD_KEY]}{' (auto)' if options.init == 'auto' else ''}, compensation {'on' if options.compensation else 'off'}, "
        f"{options.encoding} coding, threshold={meta.get(THRESHOLD_METHOD_KEY, 'clip bounds')}"
        f"{' (channel-wise)' if options.channel_wise and THRESHOLD_METHOD_KEY in meta else ''}, {meta[LAYOUT_KEY]} layout, "
        f"{options.target} target, {len(model.graph.node)} nodes"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from icsnn_onnx.data import check_same_inputs, load_dataset
    from icsnn_onnx.runtime import Session, evaluate

    engine = _engine(args)
    progress = _progress_factory(args.quiet)
    session = Session(args.model, provider=args.provider if engine is None else "cpu")
    ann = None
    if args.ann is not None:
        ann = Session(args.ann, provider="cpu" if engine else args.provider)
        check_same_inputs(session.inputs, ann.inputs, str(args.ann))
    data = load_dataset(args.data, session.inputs, what=str(args.data))
    if engine is not None:
        return _eval_distributed(args, data, engine)
    result = evaluate(session, data, args.output, args.batch_size, progress)
    reference = None
    if ann is not None:
        reference = evaluate(ann, data, args.output, args.batch_size, progress)
    agreement = result.agreement(reference) if reference is not None else None
    _print_eval(
        args,
        f"{result.samples} samples, provider {session.provider}",
        result.accuracy,
        None if reference is None else reference.accuracy,
        agreement,
        result.per_step_accuracy,
    )
    return 0


def _eval_distributed(args: argparse.Namespace, data: object, engine: RayEngine) -> int:
    from icsnn_onnx.runtime.scoring import score

    models = {"snn": args.model} | ({"ann": args.ann} if args.ann is not None else {})
    reference = "ann" if args.ann is not None else None
    s = score(
        models,
        data,
        engine,
        reference=reference,
        output=args.output,
        batch_size=args.batch_size,
        what=str(args.data),
    )  # type: ignore[arg-type]
    _print_eval(
        args,
        f"{s.samples} samples, Ray workers on {engine.provider.upper()}",
        s.accuracy["snn"],
        s.accuracy.get("ann"),
        s.agreement.get("snn"),
        s.per_step_accuracy["snn"],
    )
    return 0


def _print_eval(
    args: argparse.Namespace,
    header: str,
    accuracy: float | None,
    ann_accuracy: float | None,
    agreement: float | None,
    per_step: tuple[float, ...] | None,
) -> None:
    if accuracy is None and args.ann is None:
        raise DataError(f"{args.data} has no labels 'y' to compute accuracy (and no --ann to compare)")
    print(header)
    if args.ann is not None:
        acc = "n/a" if ann_accuracy is None else f"{100 * ann_accuracy:.2f}%"
        print(f"ANN  {args.ann}: accuracy {acc}")
    if accuracy is not None:
        print(f"SNN  {args.model}: accuracy {100 * accuracy:.2f}%")
    if agreement is not None:
        print(f"agreement (same predicted class): {100 * agreement:.2f}%")
    if per_step:
        print("accuracy after t steps:")
        print("  " + "  ".join(f"T={t}: {100 * a:.2f}%" for t, a in enumerate(per_step, 1)))


_MAXPOOL_EFFECT = {
    "read-out": "no neuron downstream: exact, once on the read-out",
    "decompose": "decompose: max(a,b) = a + ReLU(b - a) tree of IF neurons (exact as T grows)",
    "gate": "gate: forwards the spikes of the unit with the most input so far",
    "avg": "avg: AveragePool of the same window (approximate)",
}


def _inspect(args: argparse.Namespace) -> int:
    from icsnn_onnx.converter import inspect_model

    report = inspect_model(args.model, maxpool=args.maxpool, encoding=args.encoding)
    print(f"{args.model}  (opset {report.source_opset}, producer: {report.producer or 'unknown'})")
    print("inputs:  " + ", ".join(s.describe() for s in report.inputs))
    print("outputs: " + ", ".join(report.outputs))
    print(f"activation sites: {len(report.sites)}")
    for site in report.sites:
        print(f"  {site.name:<28} {site.transfer.describe():<32} {site.input} -> {site.output}")
    if report.maxpools:
        print(f"MaxPool ({args.maxpool} policy between neurons):")
        for name, policy in report.maxpools:
            print(f"  {name:<28} {_MAXPOOL_EFFECT.get(policy, policy)}")
    print("op coverage:")
    for op, behaviour, count in report.op_behaviour:
        print(f"  {op:<22} {count:>4}  {behaviour}")
    if report.blockers:
        print(
            f"blocking conversion: {len(report.blockers)}{'' if report.sites else ' (no ReLU-like activation)'}"
        )
        for b in report.blockers:
            print(f"  {b}")
    elif not report.sites:
        print("nothing to convert: the model has no nonlinear activation")
    else:
        calib = " (needs --calib for ReLU thresholds)" if report.needs_calibration else ""
        print(f"convertible{calib}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from icsnn_onnx.converter import convert
    from icsnn_onnx.model_io import check_output, save_model
    from icsnn_onnx.tuning import tune

    options = _options(args)
    inputs = (args.model, args.calib, args.data)
    if args.output is not None:
        check_output(args.output, args.force, inputs)  # fail before any work
    engine = _engine(args)
    progress = _progress_factory(args.quiet)
    r = tune(
        args.model,
        args.calib,
        args.data,
        options=options,
        max_drop=args.max_drop,
        max_T=args.max_T,
        progress=progress,
        engine=engine,
    )
    print(
        f"ANN accuracy {100 * r.ann_accuracy:.2f}%; target ≥ {100 * r.ann_accuracy - r.max_drop:.2f}% (init {options.init})"
    )
    for T, acc in sorted(r.accuracy_by_T.items()):
        mark = "  <- smallest T within target" if T == r.chosen_T else ""
        print(f"  T={T:<4} {100 * acc:6.2f}%{mark}")
    if r.chosen_T is None:
        print(f"no T ≤ {args.max_T} is within {args.max_drop} points of the ANN")
        return 1
    print(f"chosen T = {r.chosen_T}")
    if args.output is not None:
        chosen = dataclasses.replace(options, T=r.chosen_T)
        save_model(
            convert(args.model, args.calib, options=chosen, progress=progress),
            args.output,
            force=args.force,
            inputs=inputs,
        )
        print(f"{args.model} -> {args.output}: the SNN at T={r.chosen_T}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json

    from icsnn_onnx.runtime.bench import bench

    r = bench(args.ann, args.snn, args.batch, args.provider, args.repeats, args.warmup, args.cuda_graph)
    if args.json:
        print(json.dumps(r.as_dict(), indent=2))
        return 0
    graph = " with CUDA graphs" if r.cuda_graph else ""
    print(
        f"batch {r.batch}, {r.provider}{graph}, median of {len(r.snn.runs_s)} SNN runs, each after a "
        f"block of T={r.T} ANN runs"
    )
    print(f"ANN  {1000 * r.ann.median_s:9.2f} ms  {r.ann.images_per_s:10.1f} images/s")
    print(f"SNN  {1000 * r.snn.median_s:9.2f} ms  {r.snn.images_per_s:10.1f} images/s  (T={r.T})")
    print(
        f"SNN / (T × ANN) = {r.ratio_to_dense_bound:.3f}   peak memory {r.peak_rss_mib:.0f} MiB "
        f"(SNN alone {r.snn_peak_rss_mib:.0f} MiB)"
    )
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    import json

    from icsnn_onnx.data import load_dataset
    from icsnn_onnx.runtime import Session
    from icsnn_onnx.runtime.diagnose import diagnose

    specs = Session(args.ann, provider="cpu").inputs
    data = load_dataset(args.data, specs, what=str(args.data)).head(args.samples)
    d = diagnose(
        args.snn, args.ann, data, args.steps, args.batch_size, args.provider, _progress_factory(args.quiet)
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


def _report(args: argparse.Namespace) -> int:
    import json

    from icsnn_onnx.data import load_dataset
    from icsnn_onnx.model_io import check_output
    from icsnn_onnx.runtime import Session
    from icsnn_onnx.runtime.report import EnergyModel, report

    if args.output is not None:  # checked before any work; created (one level) when written
        if args.output.exists() and not args.output.is_dir():
            raise OptionError(f"{args.output}: not a directory")
        target = args.output / "report.json" if args.output.is_dir() else args.output
        check_output(target, force=True, inputs=(args.snn, args.data, args.ann))
    specs = Session(args.snn, provider="cpu").inputs
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
        args.snn, data, args.ann, args.batch_size, args.provider, energy, _progress_factory(args.quiet)
    )
    record = r.as_dict()
    if args.output is not None:
        from icsnn_onnx.model_io import save_text

        args.output.mkdir(exist_ok=True)
        save_text(json.dumps(record, indent=2) + "\n", args.output / "report.json")
        try:
            from icsnn_onnx.plots import report_plots

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
    width = max(len(layer.name) for layer in r.layers)
    print(f"{'neuron layer':<{width}}  neurons   rate  silent%  always%  1st spike  v(T)/θ   corr")
    for layer in r.layers:
        first = "-" if layer.first_spike_mean is None else f"{layer.first_spike_mean:.1f}"
        residual = "-" if layer.residual_mean is None else f"{layer.residual_mean:+.2f}"
        corr = "-" if layer.correlation is None else f"{layer.correlation:.3f}"
        print(
            f"{layer.name:<{width}}  {layer.neurons:>7}  {layer.firing_rate:.3f}  {100 * layer.never_fired:7.1f}"
            f"  {100 * layer.always_fired:7.1f}  {first:>9}  {residual:>6}  {corr:>5}"
        )
    width = max([len(s.name) for s in r.synapses] + [14])
    print(f"{'synaptic layer':<{width}}  kind  SNN SOPs/sample  SNN MACs/sample  ANN MACs/sample")
    for s in r.synapses:
        print(f"{s.name:<{width}}  {s.kind:<4}  {s.sops:15.4g}  {s.snn_macs:15.4g}  {s.ann_macs:15.4g}")
    print(
        f"energy per sample: SNN {_joules(e['snn_joules_per_sample'])} "
        f"({e['sops_per_sample']:.4g} SOPs, {e['snn_macs_per_sample']:.4g} MACs), "
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


def _export(args: argparse.Namespace) -> int:
    from icsnn_onnx.export import NirOptions, export_nir

    options = NirOptions(
        thresholds=args.thresholds, initial_potential=args.initial_potential, groups=args.groups
    )
    result = export_nir(args.snn, args.output, options, force=args.force)
    counts: dict[str, int] = {}
    for node in result.graph.nodes.values():
        counts[type(node).__name__] = counts.get(type(node).__name__, 0) + 1
    nodes = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    # result.notes (what NIR expresses only approximately) were logged as warnings.
    print(f"{args.snn} -> {args.output}: NIR graph, {result.sites} IF site(s), T={result.T}; {nodes}")
    return 0


COMMANDS = {
    "convert": _convert,
    "eval": _eval,
    "inspect": _inspect,
    "tune": _tune,
    "bench": _bench,
    "diagnose": _diagnose,
    "report": _report,
    "export": _export,
}
