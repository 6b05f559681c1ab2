"""Conversion options: one frozen, validated record passed through the pipeline and saved in
the output's metadata."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal

from icsnn_onnx.contract import metadata_key

InitPolicy = Literal["zero", "half", "calibrated"]
INIT_POLICIES: tuple[str, ...] = ("zero", "half", "calibrated")
ENCODINGS: tuple[str, ...] = ("direct", "rate", "poisson")
MAXPOOL_POLICIES: tuple[str, ...] = ("decompose", "gate", "avg")
DEFAULT_MAXPOOL = "decompose"  # best held-out accuracy at T <= 8 in benchmarks/mnist_fidelity.py
LAYOUTS: tuple[str, ...] = ("auto", "time-batched", "step-major", "loop")
#: Where the SNN will run: ``portable`` emits the IF neuron in elementwise operators (exact on
#: every execution provider); ``cpu`` emits it, where a site allows, in the operators ONNX
#: Runtime's CPU provider keeps in its blocked layout (:data:`icsnn_onnx.neuron.CHANNELWISE_EQUATIONS`).
TARGETS: tuple[str, ...] = ("portable", "cpu")

_PERCENTILE = re.compile(r"^p(\d{1,3}(?:\.\d+)?)$")

#: ``--threshold auto``: the least-squares θ for the compiled T's levels up to this T, the
#: 99.99th percentile above it. On the held-out MNIST images (benchmarks/mnist_fidelity.py's ReLU
#: and MaxPool CNNs, init half, compensation) mse wins by up to 71 points at T = 4 and p99.99 by
#: 0.04–0.12 points from T = 32 on (benchmarks/threshold_auto.py).
AUTO_MSE_MAX_T = 16


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


def resolve_threshold_method(spec: str, T: int) -> str:
    """The method ``spec`` stands for at ``T``: ``auto`` becomes ``mse`` or ``p99.99``."""
    if spec != "auto":
        return spec
    return "mse" if T <= AUTO_MSE_MAX_T else "p99.99"


def threshold_depends_on_T(spec: str) -> bool:
    """Whether θ is fitted to the compiled T (so a model compiled for one T is not another's)."""
    return spec in ("mse", "auto")


@dataclass(frozen=True)
class ConversionOptions:
    """What to build. Validated on construction; raises ``ValueError`` on a bad value."""

    T: int = 32
    threshold: str = "auto"
    channel_wise: bool = False
    init: str = "half"
    encoding: str = "direct"
    compensation: bool = True
    maxpool: str = DEFAULT_MAXPOOL
    seed: int = 0
    per_step: bool = False
    layout: str = "step-major"
    target: str = "portable"
    calib_samples: int | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 1:
            raise ValueError(f"T must be a positive integer, got {self.T!r}")
        parse_threshold_method(self.threshold)
        if self.init not in INIT_POLICIES:
            raise ValueError(f"init must be one of {INIT_POLICIES}, got {self.init!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.maxpool not in MAXPOOL_POLICIES:
            raise ValueError(f"maxpool must be one of {MAXPOOL_POLICIES}, got {self.maxpool!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.layout == "loop" and self.target != "portable":
            raise ValueError("the loop layout runs the portable neurons: use target 'portable' with it")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise ValueError(f"calib_samples must be >= 1, got {self.calib_samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def threshold_method(self) -> str:
        """The threshold method at this T (``auto`` resolved)."""
        return resolve_threshold_method(self.threshold, self.T)

    @property
    def percentile(self) -> float | None:
        return parse_threshold_method(self.threshold_method)

    def as_metadata(self) -> dict[str, str]:
        return {metadata_key(k): str(v) for k, v in asdict(self).items() if k != "batch_size"}
