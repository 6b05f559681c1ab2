"""Normalize thresholds: one θ per activation site (per channel with ``channel_wise``).

- Clipped or quantized activation with bound λ: θ = λ. The SNN's rate code then spans
  exactly the ANN's output range; no calibration data is needed.
- Unclipped ReLU: θ = a statistic (max, a percentile, or the least-squares θ for the compiled
  T's levels) of the site's activations on calibration data (:mod:`icsnn_onnx.calibration.statistics`).
  Activations above θ saturate.
- Generic activation (a sigma-delta neuron, signed spikes): the same statistic of the magnitude
  of its activation ``|f(z)|`` (docs/method.md §14).

With graded spikes (``levels`` K > 1) the neuron spans that range in K units: θ = λ/K, and the
mse statistic fits the T·K levels a neuron can then say over T steps (docs/method.md §16).

The neuron emits θ·s(t), so weights are left untouched (θ lives in the neuron).
"""

from __future__ import annotations

import logging

import numpy as np

from icsnn_onnx.calibration.statistics import activation_thresholds
from icsnn_onnx.contract import THRESHOLD_METHOD_KEY, THRESHOLD_SOURCE_KEY
from icsnn_onnx.data import Data
from icsnn_onnx.errors import CalibrationError
from icsnn_onnx.passes import Pass, PassResult, ensure, require
from icsnn_onnx.passes.graph_utils import channel_shape
from icsnn_onnx.passes.program import ActivationKind, ActivationSite, Program
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.runtime.engine import RayEngine

logger = logging.getLogger(__name__)


class NormalizeThresholds(Pass):
    def __init__(
        self, calib: Data | None, progress: ProgressFactory = silent, engine: RayEngine | None = None
    ) -> None:
        self.calib = calib
        self.progress = progress
        self.engine = engine  # statistics on Ray workers, where given

    def requires(self, program: Program) -> None:
        left = [n.name for n in program.graph.nodes if n.op == "BatchNormalization"]
        require(not left, self.name, f"BatchNormalization must be folded first: {left}")
        require(bool(program.sites), self.name, "no activation sites recognized")

    def ensures(self, program: Program) -> None:
        missing = set(program.sites) - set(program.thresholds)
        ensure(not missing, self.name, f"sites without threshold: {sorted(missing)}")

    def call(self, program: Program) -> PassResult:
        options = program.options
        unclipped = [
            s
            for s in program.sites.values()
            if s.transfer.kind in (ActivationKind.RELU, ActivationKind.GENERIC)
        ]
        for site in program.sites.values():
            if site.transfer.upper_bound is not None:
                program.thresholds[site.name] = np.asarray(site.transfer.upper_bound, np.float32)
        if unclipped and self.calib is None:
            names = ", ".join(s.name for s in unclipped[:5]) + (" …" if len(unclipped) > 5 else "")
            raise CalibrationError(
                f"{len(unclipped)} unclipped ReLU or generic activation site(s) ({names}) need "
                "calibration data for their thresholds (--calib)"
            )
        fitted = unclipped + self._clipped_to_fit(program) if self.calib is not None else []
        if fitted:
            calib = self.calib.head(options.calib_samples)
            stats = activation_thresholds(
                program.to_onnx(),
                [_statistic_of(s) for s in fitted],
                calib,
                percentile=options.percentile,
                levels=options.T * options.levels if options.threshold_method == "mse" else None,
                channel_wise=options.channel_wise,
                bounds={
                    s.input: s.transfer.upper_bound for s in fitted if s.transfer.upper_bound is not None
                },
                magnitudes=[s.output for s in fitted if s.transfer.kind is ActivationKind.GENERIC],
                batch_size=options.batch_size,
                progress=self.progress,
                engine=self.engine,
            )
            for site in fitted:
                program.thresholds[site.name] = self._shape(
                    program, site.name, site.input, stats[_statistic_of(site)]
                )
            logger.info("calibrated %d threshold(s) on %s samples", len(fitted), calib.size or "all")
        if options.levels > 1:  # a graded neuron spans its range λ in K units: θ = λ/K
            for name, theta in program.thresholds.items():
                program.thresholds[name] = (np.asarray(theta, np.float64) / options.levels).astype(np.float32)
        program.metadata[THRESHOLD_SOURCE_KEY] = "calibration" if fitted else "clip bounds"
        if fitted:
            program.metadata[THRESHOLD_METHOD_KEY] = options.threshold_method
        return PassResult(program, True)

    @staticmethod
    def _clipped_to_fit(program: Program) -> list[ActivationSite]:
        """Clipped sites (ReLU6, hardtanh at 0) whose θ data can fit below their bound λ: the IF
        neuron saturates at θ as the ANN does at λ, and a lower θ gives small T finer levels.
        Quantized sites keep θ = λ: their levels are what the SNN reproduces. A tensor read by
        sites of different bounds keeps them (one statistic per tensor)."""
        clipped = [s for s in program.sites.values() if s.transfer.kind is ActivationKind.CLIPPED]
        bounds: dict[str, set[float | None]] = {}
        for site in program.sites.values():
            bounds.setdefault(site.input, set()).add(site.transfer.upper_bound)
        return [s for s in clipped if len(bounds[s.input]) == 1]

    @staticmethod
    def _shape(program: Program, site: str, tensor: str, theta: np.ndarray) -> np.ndarray:
        theta = theta.astype(np.float64)
        layer = float(theta.max())
        if layer <= 0:
            logger.warning("site %s never activates on calibration data; using θ = 1", site)
            layer = 1.0
        theta = np.where(theta > 0, theta, layer)  # dead channels take the layer's value
        if theta.size == 1:
            return np.asarray(theta.reshape(()), np.float32)
        shape = program.graph.tensors()[tensor].shape
        if shape is None:  # e.g. after an If whose branches differ in shape: one θ for the layer
            logger.info("site %s: rank unknown, so one threshold for the layer", site)
            return np.asarray(layer, np.float32)
        return theta.reshape(channel_shape(len(shape), theta.size)).astype(np.float32)


def _statistic_of(site: ActivationSite) -> str:
    """The tensor θ is a statistic of: a ReLU's pre-activation (its values ReLU'd), a generic
    activation's output (its magnitude)."""
    return site.output if site.transfer.kind is ActivationKind.GENERIC else site.input
