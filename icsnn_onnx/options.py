"""Conversion options: one frozen, validated record passed through the pipeline and saved in
the output's metadata."""

from __future__ import annotations

import re
from dataclasses import Field, dataclass, field, fields
from enum import Enum

from icsnn_onnx.contract import metadata_key
from icsnn_onnx.neurons.graded import MAX_LEVELS


class Choice(str, Enum):
    """An option with a fixed set of values; compares equal to, and prints as, its value."""

    def __str__(self) -> str:
        return str(self.value)


class InitPolicy(Choice):
    ZERO = "zero"
    HALF = "half"  # θ/2, IC-SNN Alg 1
    CALIBRATED = "calibrated"  # per channel on calibration data, Alg 2
    AUTO = "auto"  # calibrated where it wins and data is given, else half (resolve_init)


class Encoding(Choice):
    DIRECT = "direct"
    RATE = "rate"
    POISSON = "poisson"


class MaxPoolPolicy(Choice):
    DECOMPOSE = "decompose"
    GATE = "gate"
    AVG = "avg"


class Layout(Choice):
    AUTO = "auto"
    TIME_BATCHED = "time-batched"
    STEP_MAJOR = "step-major"
    LOOP = "loop"


class Target(Choice):
    """Where the SNN will run: ``portable`` emits the IF neuron in elementwise operators (exact on
    every execution provider); ``cpu`` emits it, where a site allows, in the operators ONNX
    Runtime's CPU provider keeps in its blocked layout (:data:`icsnn_onnx.neurons.if_channelwise.CHANNELWISE_EQUATIONS`)."""

    PORTABLE = "portable"
    CPU = "cpu"


INIT_POLICIES: tuple[str, ...] = tuple(c.value for c in InitPolicy)
ENCODINGS: tuple[str, ...] = tuple(c.value for c in Encoding)
MAXPOOL_POLICIES: tuple[str, ...] = tuple(c.value for c in MaxPoolPolicy)
DEFAULT_MAXPOOL = MaxPoolPolicy.DECOMPOSE  # best held-out accuracy at T <= 8 (benchmarks/mnist_fidelity.py)
LAYOUTS: tuple[str, ...] = tuple(c.value for c in Layout)
TARGETS: tuple[str, ...] = tuple(c.value for c in Target)

_PERCENTILE = re.compile(r"^p(\d{1,3}(?:\.\d+)?)$")

#: ``--init auto``: Alg 2 (calibrated) up to this T when calibration data is given, θ/2 above or
#: without data. Chosen on the held-out split of benchmarks/mnist_fidelity.py's six nets
#: (docs/method.md §13).
AUTO_CALIBRATED_MAX_T = 64


def resolve_init(options: ConversionOptions, has_calibration: bool, trial_fits: bool = True) -> InitPolicy:
    """The initial potential ``options.init`` stands for: ``auto`` becomes calibrated (Alg 2) with
    calibration data up to :data:`AUTO_CALIBRATED_MAX_T` steps where its unrolled trial SNN fits
    (``trial_fits``, :class:`~icsnn_onnx.passes.initial_potential.ResolveInit`), else half. The
    layout does not enter: every layout gets the same potentials."""
    if options.init is not InitPolicy.AUTO:
        return options.init
    if has_calibration and options.T <= AUTO_CALIBRATED_MAX_T and trial_fits:
        return InitPolicy.CALIBRATED
    return InitPolicy.HALF


#: A field's metadata key naming what None means for it ("auto": decided during conversion).
NONE_IN_METADATA = "none_means"


def resolve_bias_calibration(options: ConversionOptions) -> bool:
    """Whether bias calibration runs (given calibration data), ``options.init`` already resolved:
    as asked, or with ``None`` (auto) exactly where Alg 2 runs. Chosen on benchmarks/low_latency.py's
    nets (docs/method.md §17): it never cost more than 0.07 points and gained up to 20 at T ≤ 2."""
    if options.bias_calibration is not None:
        return options.bias_calibration
    return options.init is InitPolicy.CALIBRATED


def parse_threshold_method(spec: str) -> float | None:
    """``"max"``, ``"mse"`` and ``"auto"`` → ``None``; ``"p99.99"`` → ``99.99`` (a percentile)."""
    if spec in ("max", "mse", "auto"):
        return None
    match = _PERCENTILE.match(spec)
    if not match or not 0.0 < float(match.group(1)) <= 100.0:
        raise ValueError(
            "threshold method must be 'auto', 'max', 'mse' or a percentile like 'p99.99' in "
            f"(0, 100], got {spec!r}"
        )
    return float(match.group(1))


def resolve_threshold_method(spec: str) -> str:
    """The method ``spec`` stands for: ``auto`` becomes ``mse`` (fitted to the compiled T), at
    every T. On the MNIST nets of benchmarks/mnist_fidelity.py (held-out split) mse wins by up to
    71 points at T <= 4; the 99.99th percentile, the old choice above T = 16, wins by at most 0.12
    points at T >= 32 on 3-layer CNNs and loses points on deep ones (docs/method.md §13)."""
    return "mse" if spec == "auto" else spec


def threshold_depends_on_T(spec: str) -> bool:
    """Whether θ is fitted to the compiled T (so a model compiled for one T is not another's)."""
    return spec in ("mse", "auto")


def _choice(kind: type[Choice], name: str, value: object) -> Choice:
    try:
        return kind(value)
    except ValueError:
        allowed = tuple(c.value for c in kind)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def _integer(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ConversionOptions:
    """What to build: the one record every pass reads (``program.options``), the CLI builds from
    its flags and the output's metadata records. Validated on construction (choices may be given
    as strings); raises ``ValueError`` on a bad value."""

    T: int = 32
    threshold: str = "auto"
    channel_wise: bool = True  # one θ per channel: wins at small T (docs/method.md §13)
    init: InitPolicy = InitPolicy.AUTO
    encoding: Encoding = Encoding.DIRECT
    compensation: bool = True
    maxpool: MaxPoolPolicy = DEFAULT_MAXPOOL
    seed: int = 0
    per_step: bool = False
    layout: Layout = Layout.STEP_MAJOR
    target: Target = Target.PORTABLE
    calib_samples: int | None = None
    batch_size: int = 64
    levels: int = 1  # K: a spike carries up to K units of θ per step (1: binary spikes)
    # Remove each site's mean current error on calibration data (docs/method.md §17). None (auto):
    # wherever Alg 2 calibrates the potentials, which already fits the SNN to the compiled T.
    bias_calibration: bool | None = field(default=None, metadata={NONE_IN_METADATA: "auto"})

    def __post_init__(self) -> None:
        _integer("T", self.T, 1)
        parse_threshold_method(self.threshold)
        for name, kind in (
            ("init", InitPolicy),
            ("encoding", Encoding),
            ("maxpool", MaxPoolPolicy),
            ("layout", Layout),
            ("target", Target),
        ):
            object.__setattr__(self, name, _choice(kind, name, getattr(self, name)))
        _integer("seed", self.seed, 0)
        if self.layout is Layout.LOOP and self.target is not Target.PORTABLE:
            raise ValueError("the loop layout runs the portable neurons: use target 'portable' with it")
        if self.calib_samples is not None:
            _integer("calib_samples", self.calib_samples, 1)
        _integer("batch_size", self.batch_size, 1)
        if self.bias_calibration is not None and not isinstance(self.bias_calibration, bool):
            raise ValueError(
                f"bias_calibration must be True, False or None (auto), got {self.bias_calibration!r}"
            )
        _integer("levels", self.levels, 1)
        if self.levels > MAX_LEVELS:
            raise ValueError(f"levels must be at most {MAX_LEVELS}, got {self.levels}")

    @property
    def threshold_method(self) -> str:
        """The threshold method at this T (``auto`` resolved)."""
        return resolve_threshold_method(self.threshold)

    @property
    def percentile(self) -> float | None:
        return parse_threshold_method(self.threshold_method)

    def as_metadata(self) -> dict[str, str]:
        return {
            metadata_key(f.name): metadata_text(f, getattr(self, f.name))
            for f in fields(self)
            if f.name != "batch_size"
        }


def metadata_text(option: Field, value: object) -> str:
    """How an option's value is written to metadata: ``str``, or the field's word for None."""
    return option.metadata.get(NONE_IN_METADATA, "None") if value is None else str(value)
