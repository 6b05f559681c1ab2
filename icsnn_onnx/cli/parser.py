"""The command line's grammar: every command, flag, default (ConversionOptions' own) and range."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from icsnn_onnx._version import __version__
from icsnn_onnx.cli.types import (
    fixed_input,
    gpus,
    level_list,
    levels,
    non_negative_int,
    picojoules,
    points,
    positive_int,
    step_list,
    threshold,
)
from icsnn_onnx.export.options import GROUPS, INITIAL_POTENTIALS, THRESHOLDS, NirOptions
from icsnn_onnx.options import (
    AUTO_CALIBRATED_MAX_T,
    ENCODINGS,
    INIT_POLICIES,
    LAYOUTS,
    MAXPOOL_POLICIES,
    TARGETS,
    ConversionOptions,
)
from icsnn_onnx.runtime.engine import RayEngine

DEFAULTS = ConversionOptions()
NIR_DEFAULTS = NirOptions()
ENGINE_DEFAULTS = RayEngine()
#: Every data argument also takes shards (icsnn_onnx.data), read one at a time.
SHARDS = ", or a folder or quoted glob of such shards"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
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
    method = _method_options()
    engine = _engine_options()
    fixed = _fixed_options()
    _convert_parser(sub, common, method, engine, fixed)
    _eval_parser(sub, common, engine, fixed)
    _tune_parser(sub, common, _method_options(several_levels=True), engine, fixed)
    _bench_parser(sub, common, fixed)
    _diagnose_parser(sub, common, fixed)
    _report_parser(sub, common, fixed)
    _export_parser(sub, common)
    _inspect_parser(sub, common, fixed)
    return parser


def _fixed_options() -> argparse.ArgumentParser:
    fixed = _Parser(add_help=False)
    fixed.add_argument(
        "--input",
        dest="fixed",
        type=fixed_input,
        action="append",
        metavar="NAME=VALUE",
        help="an input that is no sample (a sample rate, a state): one value for every sample, a "
        "number, a comma list or an .npy file (repeatable); convert compiles it in",
    )
    return fixed


def _engine_options() -> argparse.ArgumentParser:
    engine = _Parser(add_help=False)
    group = engine.add_argument_group("engine (where the data is run)")
    group.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (default): this process; ray: workers of a Ray cluster, each with its own ONNX "
        'Runtime session (pip install "icsnn-onnx[ray]"); the same numbers either way',
    )
    group.add_argument(
        "--address", help="Ray cluster to join (e.g. HOST:6379 from `ray start --head`; default: a local one)"
    )
    group.add_argument(
        "--workers",
        type=positive_int,
        default=ENGINE_DEFAULTS.workers,
        help="Ray workers (default: one per CPU)",
    )
    group.add_argument(
        "--gpus-per-worker",
        type=gpus,
        default=ENGINE_DEFAULTS.gpus_per_worker,
        help="GPUs per Ray worker (default 0; above 0 the workers run on the CUDA provider)",
    )
    return engine


def _method_options(several_levels: bool = False) -> argparse.ArgumentParser:
    """What the SNN is made of: shared by convert and tune (which compares several ``--levels``);
    defaults are ConversionOptions' own."""
    method = _Parser(add_help=False)
    method.add_argument("--calib", type=Path, help=f"calibration inputs (.npz with x, or .npy){SHARDS}")
    method.add_argument("--calib-samples", type=positive_int, help="use only the first N calibration samples")
    method.add_argument(
        "--threshold",
        type=threshold,
        default=DEFAULTS.threshold,
        help="threshold of ReLUs (and of clipped ones, below their bound, when --calib is given): mse "
        "(least squares for the levels of the compiled T), max, a percentile pNN.NN, or auto "
        "(default: mse)",
    )
    method.add_argument(
        "--channel-wise",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.channel_wise,
        help=f"one threshold per channel (default {'on' if DEFAULTS.channel_wise else 'off'}); "
        "--no-channel-wise: one per layer",
    )
    method.add_argument(
        "--init",
        choices=INIT_POLICIES,
        default=DEFAULTS.init,
        help="initial potential: half = θ/2 (Alg 1), zero, calibrated on --calib data for this T (Alg 2), "
        f"or auto (default): calibrated with --calib up to T={AUTO_CALIBRATED_MAX_T} where its unrolled "
        "trial SNN fits, half otherwise; the model's metadata records which",
    )
    if several_levels:
        method.add_argument(
            "--levels",
            dest="level_choices",
            type=level_list,
            default=(DEFAULTS.levels,),
            help="graded-spike levels K to compare, e.g. 1,3,15 (default 1: binary spikes): each K's "
            "least T within target is measured for synaptic operations; the fastest and the cheapest "
            "(T, K) pairs are named",
        )
    else:
        method.add_argument(
            "--levels",
            type=levels,
            default=DEFAULTS.levels,
            help="graded spikes: a neuron fires up to K units of its threshold per step (default 1: "
            "binary spikes); with K = 2^b - 1 at -T 1 a b-bit quantized ANN converts exactly",
        )
    method.add_argument(
        "--bias-calibration",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.bias_calibration,
        help="with --calib: remove each neuron layer's mean current error at the compiled T, measured "
        "layer by layer, through the bias of the layer computing it (in Alg 2's pass; kept only if the "
        "output gets closer to the ANN's; default: wherever Alg 2 runs, i.e. --init calibrated, or auto "
        "with --calib up to T 64)",
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
        type=non_negative_int,
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
        "--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="calibration batch size"
    )
    return method


def _convert_parser(
    sub: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    method: argparse.ArgumentParser,
    engine: argparse.ArgumentParser,
    fixed: argparse.ArgumentParser,
) -> None:
    conv = sub.add_parser(
        "convert", parents=[common, method, engine, fixed], help="convert an ANN into an unrolled SNN"
    )
    conv.add_argument("model", type=Path, help="input ANN (.onnx); never modified")
    conv.add_argument("-o", "--output", type=Path, help="output SNN (default: IN with .snn.onnx)")
    conv.add_argument(
        "-T", "--timesteps", dest="T", type=positive_int, default=DEFAULTS.T, help="time steps (default 32)"
    )
    conv.add_argument(
        "--per-step", action="store_true", help="add y_per_step outputs [T, ...] for every output y"
    )
    conv.add_argument("--force", action="store_true", help="overwrite the output if it exists")


def _eval_parser(
    sub: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    engine: argparse.ArgumentParser,
    fixed: argparse.ArgumentParser,
) -> None:
    ev = sub.add_parser("eval", parents=[common, engine, fixed], help="accuracy of a model on labelled data")
    ev.add_argument("model", type=Path, help="model to evaluate (SNN or any classifier)")
    ev.add_argument("--data", type=Path, required=True, help=f".npz with x and integer labels y{SHARDS}")
    ev.add_argument("--ann", type=Path, help="also evaluate this ANN and compare")
    ev.add_argument("--output", help="output holding class scores or labels (default: the first)")
    ev.add_argument("--batch-size", type=positive_int, default=64)
    ev.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")


def _tune_parser(
    sub: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    method: argparse.ArgumentParser,
    engine: argparse.ArgumentParser,
    fixed: argparse.ArgumentParser,
) -> None:
    tu = sub.add_parser(
        "tune", parents=[common, method, engine, fixed], help="smallest T within --max-drop points of the ANN"
    )
    tu.add_argument("model", type=Path, help="the ANN")
    tu.add_argument(
        "--data", type=Path, required=True, help=f"held-out labelled data (.npz with x, y){SHARDS}"
    )
    tu.add_argument(
        "--max-drop",
        type=points,
        default=0.5,
        help="accuracy points below the ANN allowed (0–100, default 0.5)",
    )
    tu.add_argument("--max-T", type=positive_int, default=64)
    tu.add_argument("-o", "--output", type=Path, help="also write the SNN at the chosen T here")
    tu.add_argument("--force", action="store_true", help="overwrite the output if it exists")


def _bench_parser(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser, fixed: argparse.ArgumentParser
) -> None:
    be = sub.add_parser("bench", parents=[common, fixed], help="time an SNN against its ANN")
    be.add_argument("ann", type=Path, help="the ANN")
    be.add_argument("snn", type=Path, help="the SNN converted from it")
    be.add_argument("--batch", type=positive_int, default=64)
    be.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    be.add_argument("--repeats", type=positive_int, help="timed runs of each (default: enough for ~3 s)")
    be.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs first (≥ 0, default 1)")
    be.add_argument("--cuda-graph", action="store_true", help="capture and replay CUDA graphs (CUDA only)")
    be.add_argument("--json", action="store_true", help="print the result as JSON")


def _diagnose_parser(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser, fixed: argparse.ArgumentParser
) -> None:
    di = sub.add_parser(
        "diagnose",
        parents=[common, fixed],
        help="per-layer error of an SNN against its ANN at each step count",
    )
    di.add_argument("snn", type=Path, help="the SNN (any layout or target)")
    di.add_argument("--ann", type=Path, required=True, help="the ANN it was converted from")
    di.add_argument(
        "--data", type=Path, required=True, help=f"inputs (.npz with x, or .npy; labels unused){SHARDS}"
    )
    di.add_argument("--steps", type=step_list, help="step counts to trace, e.g. 8,32,128 (default 1,2,4,…,T)")
    di.add_argument("--samples", type=positive_int, help="use only the first N samples")
    di.add_argument("--batch-size", type=positive_int, default=16)
    di.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    di.add_argument("--json", action="store_true", help="print the result as JSON")


def _report_parser(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser, fixed: argparse.ArgumentParser
) -> None:
    rp = sub.add_parser(
        "report",
        parents=[common, fixed],
        help="spike activity, latency, synaptic operations and energy of an SNN",
    )
    rp.add_argument("snn", type=Path, help="the SNN (step-major or loop layout)")
    rp.add_argument(
        "--data",
        type=Path,
        required=True,
        help=f"inputs (.npz with x and optional labels y, or .npy){SHARDS}",
    )
    rp.add_argument(
        "--ann", type=Path, help="the ANN it was converted from: correlations, agreement, its accuracy"
    )
    rp.add_argument("-o", "--output", type=Path, help="write report.json and PNG plots into this folder")
    rp.add_argument("--samples", type=positive_int, help="use only the first N samples")
    rp.add_argument("--batch-size", type=positive_int, default=32)
    rp.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto")
    rp.add_argument(
        "--e-ac", type=picojoules, default=0.9, help="pJ per accumulate (default 0.9: 45 nm, Horowitz 2014)"
    )
    rp.add_argument("--e-mac", type=picojoules, default=4.6, help="pJ per multiply-accumulate (default 4.6)")
    rp.add_argument("--json", action="store_true", help="print the report as JSON")


def _export_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ex = sub.add_parser(
        "export",
        parents=[common],
        help="write an SNN as NIR (neuromorphic hardware and simulators)",
        description="Write an SNN as a NIR graph (nir.IF neurons, reset by subtraction); what NIR "
        "cannot express is refused, what it expresses approximately is said (docs/method.md §12).",
    )
    ex.add_argument("snn", type=Path, help="an SNN written by icsnn-onnx convert (any layout)")
    ex.add_argument("--to", choices=("nir",), required=True, help="the format (nir: HDF5, nir.write)")
    ex.add_argument("-o", "--output", type=Path, required=True, help="the file to write")
    ex.add_argument("--force", action="store_true", help="replace an existing output file")
    ex.add_argument(
        "--thresholds",
        choices=THRESHOLDS,
        default=NIR_DEFAULTS.thresholds,
        help="unit: θ folded into the input weights, every threshold 1 (default); keep: per-neuron θ",
    )
    ex.add_argument(
        "--initial-potential",
        choices=INITIAL_POTENTIALS,
        default=NIR_DEFAULTS.initial_potential,
        help="NIR has no v(0): bias = v(0)/T added to the input at every step (default), or none",
    )
    ex.add_argument(
        "--groups",
        choices=GROUPS,
        default=NIR_DEFAULTS.groups,
        help="dense: grouped convolutions written dense (sinabs 3.1 reads no groups; default); keep",
    )


def _inspect_parser(
    sub: argparse._SubParsersAction, common: argparse.ArgumentParser, fixed: argparse.ArgumentParser
) -> None:
    ins = sub.add_parser("inspect", parents=[common, fixed], help="activation sites, op coverage, blockers")
    ins.add_argument("model", type=Path)
    ins.add_argument("--maxpool", choices=MAXPOOL_POLICIES, default=DEFAULTS.maxpool, help="as for convert")
    ins.add_argument("--encoding", choices=ENCODINGS, default="direct", help="as for convert")
