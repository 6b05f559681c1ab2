"""One function per command: call the library, print the result. The only code that prints."""

from __future__ import annotations

import argparse
import dataclasses

from icsnn_onnx.cli.common import engine_of, fixed_of, options_of, progress_factory
from icsnn_onnx.contract import (
    BIAS_SITES_KEY,
    INIT_METHOD_KEY,
    LAYOUT_KEY,
    SITES_KEY,
    THRESHOLD_METHOD_KEY,
    SnnMetadata,
)
from icsnn_onnx.errors import DataError, OptionError
from icsnn_onnx.runtime.engine import RayEngine


def convert_command(args: argparse.Namespace) -> int:
    from icsnn_onnx.converter import convert
    from icsnn_onnx.model_io import check_output, save_model

    options = options_of(args)
    output = args.output or args.model.with_name(args.model.name.removesuffix(".onnx") + ".snn.onnx")
    inputs = (args.model, args.calib)
    check_output(output, args.force, inputs)  # fail before any work
    engine = engine_of(args)
    model = convert(
        args.model,
        args.calib,
        options=options,
        progress=progress_factory(args.quiet),
        engine=engine,
        fixed=fixed_of(args),
    )
    save_model(model, output, force=args.force, inputs=inputs)
    meta = {p.key: p.value for p in model.metadata_props}
    spiking = SnnMetadata.read(meta)
    print(
        f"{args.model} -> {output}: {spiking.spiking_summary() if spiking else meta[SITES_KEY]}, "
        f"T={options.T}{f', graded spikes (K={options.levels})' if options.levels > 1 else ''}, init={meta[INIT_METHOD_KEY]}{' (auto)' if options.init == 'auto' else ''}"
        f"{f', bias calibration ({meta[BIAS_SITES_KEY]} site(s) corrected)' if BIAS_SITES_KEY in meta else ''}, "
        f"compensation {'on' if options.compensation else 'off'}, "
        f"{options.encoding} coding, threshold={meta.get(THRESHOLD_METHOD_KEY, 'clip bounds')}"
        f"{' (channel-wise)' if options.channel_wise and THRESHOLD_METHOD_KEY in meta else ''}, {meta[LAYOUT_KEY]} layout, "
        f"{options.target} target, {len(model.graph.node)} nodes"
    )
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from icsnn_onnx.data import check_same_inputs, load_dataset
    from icsnn_onnx.runtime import Session, evaluate

    engine = engine_of(args)
    progress = progress_factory(args.quiet)
    if engine is not None and args.fixed:
        raise OptionError("eval --engine ray does not take fixed inputs yet: evaluate locally")
    session = Session(args.model, provider=args.provider if engine is None else "cpu", fixed=fixed_of(args))
    ann = None
    if args.ann is not None:
        ann = Session(args.ann, provider="cpu" if engine else args.provider, fixed=fixed_of(args))
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


def inspect_command(args: argparse.Namespace) -> int:
    from icsnn_onnx.inspection import inspect_model

    report = inspect_model(args.model, maxpool=args.maxpool, encoding=args.encoding, fixed=fixed_of(args))
    print(f"{args.model}  (opset {report.source_opset}, producer: {report.producer or 'unknown'})")
    print("inputs:  " + ", ".join(s.describe() for s in report.inputs))
    print("outputs: " + ", ".join(report.outputs))
    print(f"activation sites: {len(report.sites)}")
    for site in report.sites:
        kind = f"{site.neuron} neuron"
        print(f"  {site.name:<28} {site.transfer.describe():<26} {kind:<20} {site.input} -> {site.output}")
    if report.units:
        print(f"compensated units (dense, every step): {len(report.units)}")
        for unit in report.units:
            print(f"  {unit.name:<28} {'+'.join(unit.op_types):<26} {unit.reason}")
    if report.side:
        print(
            f"side computations (dense): {len(report.side)} node(s), e.g. {report.side[0][0]}: {report.side[0][1]}"
        )
    if report.maxpools:
        print(f"MaxPool ({args.maxpool} policy between neurons):")
        for name, policy in report.maxpools:
            print(f"  {name:<28} {_MAXPOOL_EFFECT.get(policy, policy)}")
    print("op coverage:")
    for op, behaviour, count in report.op_behaviour:
        print(f"  {op:<22} {count:>4}  {behaviour}")
    if report.sites:
        print(f"spiking: {report.summary()}")
    for note in report.notes:
        print(f"note: {note}")
    if report.blockers:
        print(
            f"blocking conversion: {len(report.blockers)}"
            f"{'' if report.sites else ' (no activation to make a spiking neuron)'}"
        )
        for b in report.blockers:
            print(f"  {b}")
    elif not report.sites:
        print("nothing to convert: the model has no nonlinear activation")
    else:
        calib = " (needs --calib for thresholds)" if report.needs_calibration else ""
        print(f"convertible{calib}")
    return 0


def tune_command(args: argparse.Namespace) -> int:
    from icsnn_onnx.converter import convert
    from icsnn_onnx.model_io import check_output, save_model
    from icsnn_onnx.tuning import tune

    options = options_of(args)
    inputs = (args.model, args.calib, args.data)
    if args.output is not None:
        check_output(args.output, args.force, inputs)  # fail before any work
    engine = engine_of(args)
    progress = progress_factory(args.quiet)
    r = tune(
        args.model,
        args.calib,
        args.data,
        options=options,
        max_drop=args.max_drop,
        max_T=args.max_T,
        progress=progress,
        engine=engine,
        fixed=fixed_of(args),
        levels=args.level_choices,
    )
    print(
        f"ANN accuracy {100 * r.ann_accuracy:.2f}%; target ≥ {100 * r.ann_accuracy - r.max_drop:.2f}% (init {options.init})"
    )
    several = len(args.level_choices) > 1
    for (T, K), acc in sorted(r.accuracy_by_pair.items(), key=lambda item: (item[0][1], item[0][0])):
        chosen = (T, K) == (r.chosen_T, r.chosen_levels if several else K)
        mark = "  <- smallest T within target" if chosen else ""
        print(f"  T={T:<4}{f' K={K:<3}' if several else ''} {100 * acc:6.2f}%{mark}")
    if r.chosen_T is None:
        print(f"no T ≤ {args.max_T} is within {args.max_drop} points of the ANN")
        return 1
    levels = r.chosen_levels if several else args.level_choices[0]
    if several:
        for c in r.candidates:
            print(
                f"  within target: T={c.T} K={c.levels}: {c.sops:.4g} SOPs/sample, {c.joules * 1e9:.3g} nJ/sample"
            )
        assert r.cheapest is not None and r.least_energy is not None
        print(
            f"fastest: T={r.chosen_T} K={levels}; fewest synaptic operations: T={r.cheapest.T} "
            f"K={r.cheapest.levels}; least energy: T={r.least_energy.T} K={r.least_energy.levels}"
        )
    print(f"chosen T = {r.chosen_T}" + (f", K = {levels}" if several or levels > 1 else ""))
    if args.output is not None:
        chosen = dataclasses.replace(options, T=r.chosen_T, levels=levels)
        save_model(
            convert(args.model, args.calib, options=chosen, progress=progress, fixed=fixed_of(args)),
            args.output,
            force=args.force,
            inputs=inputs,
        )
        print(
            f"{args.model} -> {args.output}: the SNN at T={r.chosen_T}"
            + (f", K={levels}" if levels > 1 else "")
        )
    return 0


def bench_command(args: argparse.Namespace) -> int:
    import json

    from icsnn_onnx.runtime.bench import bench

    r = bench(
        args.ann,
        args.snn,
        args.batch,
        args.provider,
        args.repeats,
        args.warmup,
        args.cuda_graph,
        fixed=fixed_of(args),
    )
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


def export_command(args: argparse.Namespace) -> int:
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
