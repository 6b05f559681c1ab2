"""Command line: parse arguments, call the library, print. The only module that prints.

Exit codes: 0 success; 2 user error (bad file, data, option, unsupported model) with one
line on stderr; 1 internal error. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from icsnn_onnx._version import __version__
from icsnn_onnx.errors import DataError, IcsnnError, OptionError
from icsnn_onnx.options import (
    ENCODINGS,
    INIT_POLICIES,
    LAYOUTS,
    MAXPOOL_POLICIES,
    TARGETS,
    ConversionOptions,
    parse_threshold_method,
)
from icsnn_onnx.progress import Progress, ProgressFactory, silent

DEFAULTS = ConversionOptions()


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ {minimum}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1)


def _non_negative_int(text: str) -> int:
    return _integer(text, 0)


def _points(text: str) -> float:
    """Accuracy points: a finite number in [0, 100]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected accuracy points in [0, 100], got {text!r}") from None
    if not 0.0 <= value <= 100.0:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"expected accuracy points in [0, 100], got {text!r}")
    return value


def _step_list(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected step counts like 8,32,128, got {text!r}") from None
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"step counts must be positive integers, got {text!r}")
    return steps


def _threshold(text: str) -> str:
    try:
        parse_threshold_method(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")

    parser = _Parser(
        prog="icsnn-onnx",
        description="Compile an ONNX ANN into a low-latency spiking network (IC-SNN) for ONNX Runtime.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"icsnn-onnx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # What the SNN is made of: shared by convert and tune; defaults are ConversionOptions' own.
    method = _Parser(add_help=False)
    method.add_argument("--calib", type=Path, help="calibration inputs (.npz with x, or .npy)")
    method.add_argument(
        "--calib-samples", type=_positive_int, help="use only the first N calibration samples"
    )
    method.add_argument(
        "--threshold",
        type=_threshold,
        default=DEFAULTS.threshold,
        help="threshold of unclipped ReLUs: mse (least squares for the levels of the compiled T), "
        "max, a percentile pNN.NN, or auto (default: mse up to T=16, p99.99 above)",
    )
    method.add_argument("--channel-wise", action="store_true", help="one threshold per channel")
    method.add_argument(
        "--init",
        choices=INIT_POLICIES,
        default=DEFAULTS.init,
        help="initial potential: half = θ/2 (default, Alg 1), zero, or calibrated on --calib data for this T (Alg 2)",
    )
    method.add_argument(
        "--compensation",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.compensation,
        help="coding compensation (Alg 3, default on): read out the last neurons' integrated membrane "
        "(spike count + residual) and round rate-coded input counts",
    )
    method.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default=DEFAULTS.encoding,
        help="input coding: direct (default; analog current), rate (IF encoder) or poisson (seeded)",
    )
    method.add_argument(
        "--seed",
        type=_non_negative_int,
        default=DEFAULTS.seed,
        help="seed of the Poisson encoder's noise (≥ 0, default 0)",
    )
    method.add_argument(
        "--maxpool",
        choices=MAXPOOL_POLICIES,
        default=DEFAULTS.maxpool,
        help=f"MaxPool between neurons: decompose (exact, max(a,b) = a + ReLU(b - a) in IF neurons), "
        f"gate (forward the unit with the most input so far) or avg (approximate); default {DEFAULTS.maxpool}",
    )
    method.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=DEFAULTS.layout,
        help="step-major (default, fastest on CPU): per-step ops cloned T times; time-batched: "
        "per-step ops once over all T steps (refused where not exact); loop: one ONNX Loop over the "
        "steps, the graph's size independent of T, for long simulations (portable target; CUDA graphs "
        "cannot capture a Loop); auto: time-batched where exact, loop where the unrolled graph would "
        "be too large",
    )
    method.add_argument(
        "--target",
        choices=TARGETS,
        default=DEFAULTS.target,
        help="portable (default): IF neurons in elementwise ops, exact on every provider; cpu: in "
        "ops ONNX Runtime's CPU provider keeps in its blocked layout (faster there)",
    )
    method.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULTS.batch_size, help="calibration batch size"
    )

    conv = sub.add_parser("convert", parents=[common, method], help="convert an ANN into an unrolled SNN")
    conv.add_argument("model", type=Path, help="input ANN (.onnx); never modified")
    conv.add_argument("-o", "--output", type=Path, help="output SNN (default: IN with .snn.onnx)")
    conv.add_argument(
        "-T", "--timesteps", dest="T", type=_positive_int, default=DEFAULTS.T, help="time steps (default 32)"
    )
    conv.add_argument(
        "--per-step", action="store_true", help="add y_per_step outputs [T, ...] for every output y"
    )
    conv.add_argument("--force", action="store_true", help="overwrite the output if it exists")

    ev = sub.add_parser("eval", parents=[common], help="accuracy of a model on labelled data")
    ev.add_argument("model", type=Path, help="model to evaluate (SNN or any classifier)")
    ev.add_argument("--data", type=Path, required=True, help=".npz with x and integer labels y")
    ev.add_argument("--ann", type=Path, help="also evaluate this ANN and compare")
    ev.add_argument("--output", help="output holding class scores or labels (default: the first)")
    ev.add_argument("--batch-size", type=_positive_int, default=64)
    ev.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")

    tu = sub.add_parser(
        "tune", parents=[common, method], help="smallest T within --max-drop points of the ANN"
    )
    tu.add_argument("model", type=Path, help="the ANN")
    tu.add_argument("--data", type=Path, required=True, help="held-out labelled data (.npz with x, y)")
    tu.add_argument(
        "--max-drop",
        type=_points,
        default=0.5,
        help="accuracy points below the ANN allowed (0–100, default 0.5)",
    )
    tu.add_argument("--max-T", type=_positive_int, default=64)
    tu.add_argument("-o", "--output", type=Path, help="also write the SNN at the chosen T here")
    tu.add_argument("--force", action="store_true", help="overwrite the output if it exists")

    be = sub.add_parser("bench", parents=[common], help="time an SNN against its ANN")
    be.add_argument("ann", type=Path, help="the ANN")
    be.add_argument("snn", type=Path, help="the SNN converted from it")
    be.add_argument("--batch", type=_positive_int, default=64)
    be.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    be.add_argument("--repeats", type=_positive_int, help="timed runs of each (default: enough for ~3 s)")
    be.add_argument("--warmup", type=_non_negative_int, default=1, help="untimed runs first (≥ 0, default 1)")
    be.add_argument("--cuda-graph", action="store_true", help="capture and replay CUDA graphs (CUDA only)")
    be.add_argument("--json", action="store_true", help="print the result as JSON")

    di = sub.add_parser(
        "diagnose", parents=[common], help="per-layer error of an SNN against its ANN at each step count"
    )
    di.add_argument("snn", type=Path, help="the SNN (any layout or target)")
    di.add_argument("--ann", type=Path, required=True, help="the ANN it was converted from")
    di.add_argument("--data", type=Path, required=True, help="inputs (.npz with x, or .npy); labels unused")
    di.add_argument(
        "--steps", type=_step_list, help="step counts to trace, e.g. 8,32,128 (default 1,2,4,…,T)"
    )
    di.add_argument("--samples", type=_positive_int, help="use only the first N samples")
    di.add_argument("--batch-size", type=_positive_int, default=16)
    di.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    di.add_argument("--json", action="store_true", help="print the result as JSON")

    ins = sub.add_parser("inspect", parents=[common], help="activation sites, op coverage, blockers")
    ins.add_argument("model", type=Path)
    ins.add_argument("--maxpool", choices=MAXPOOL_POLICIES, default=DEFAULTS.maxpool, help="as for convert")
    ins.add_argument("--encoding", choices=ENCODINGS, default="direct", help="as for convert")
    return parser


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


def _convert(args: argparse.Namespace) -> int:
    from icsnn_onnx.converter import convert
    from icsnn_onnx.model_io import check_output, save_model

    options = _options(args)
    output = args.output or args.model.with_name(args.model.name.removesuffix(".onnx") + ".snn.onnx")
    inputs = (args.model, args.calib)
    check_output(output, args.force, inputs)  # fail before any work
    model = convert(args.model, args.calib, options=options, progress=_progress_factory(args.quiet))
    save_model(model, output, force=args.force, inputs=inputs)
    meta = {p.key: p.value for p in model.metadata_props}
    print(
        f"{args.model} -> {output}: {meta['icsnn.sites']} activation site(s) as IF neurons, "
        f"T={options.T}, init={options.init}, compensation {'on' if options.compensation else 'off'}, "
        f"{options.encoding} coding, threshold={meta.get('icsnn.threshold_method', 'clip bounds')}"
        f"{' (channel-wise)' if options.channel_wise else ''}, {meta['icsnn.layout']} layout, "
        f"{options.target} target, {len(model.graph.node)} nodes"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from icsnn_onnx.data import check_same_inputs, load_dataset
    from icsnn_onnx.runtime import Session, evaluate

    progress = _progress_factory(args.quiet)
    session = Session(args.model, provider=args.provider)
    ann = None
    if args.ann is not None:
        ann = Session(args.ann, provider=args.provider)
        check_same_inputs(session.inputs, ann.inputs, str(args.ann))
    data = load_dataset(args.data, session.inputs, what=str(args.data))
    result = evaluate(session, data, args.output, args.batch_size, progress)
    reference = None
    if ann is not None:
        reference = evaluate(ann, data, args.output, args.batch_size, progress)
    if result.accuracy is None and reference is None:
        raise DataError(f"{args.data} has no labels 'y' to compute accuracy (and no --ann to compare)")
    print(f"{len(data)} samples, provider {session.provider}")
    if reference is not None:
        acc = "n/a" if reference.accuracy is None else f"{100 * reference.accuracy:.2f}%"
        print(f"ANN  {args.ann}: accuracy {acc}")
    if result.accuracy is not None:
        print(f"SNN  {args.model}: accuracy {100 * result.accuracy:.2f}%")
    if reference is not None:
        print(f"agreement (same predicted class): {100 * result.agreement(reference):.2f}%")
    if result.per_step_accuracy:
        print("accuracy after t steps:")
        print("  " + "  ".join(f"T={t}: {100 * a:.2f}%" for t, a in enumerate(result.per_step_accuracy, 1)))
    return 0


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
    progress = _progress_factory(args.quiet)
    r = tune(
        args.model,
        args.calib,
        args.data,
        options=options,
        max_drop=args.max_drop,
        max_T=args.max_T,
        progress=progress,
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


COMMANDS = {
    "convert": _convert,
    "eval": _eval,
    "inspect": _inspect,
    "tune": _tune,
    "bench": _bench,
    "diagnose": _diagnose,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.debug:
        logging.getLogger("icsnn_onnx").setLevel(
            max(level, logging.WARNING) if args.quiet else logging.WARNING
        )
    try:
        return COMMANDS[args.command](args)
    except IcsnnError as err:
        if args.debug:
            raise
        message = str(err).replace("\n", " ")
        print(f"icsnn-onnx {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(
            f"icsnn-onnx {args.command}: internal error: {type(err).__name__}: {err} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1
