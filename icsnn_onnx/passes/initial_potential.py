"""Initial membrane potential v(0) per site (IC-SNN Alg 1 and Alg 2).

- ``zero``: v(0) = 0. Spike counts floor the input: mean output ≈ θ·floor(z·T/θ)/T.
- ``half``: v(0) = θ/2. Spike counts round instead of floor; the residual term
  (v(T) − v(0))/T is zero-mean for inputs uniform within a quantization step, which is
  optimal in expectation (docs/method.md).
- ``calibrated``: per channel, chosen on calibration data for the compiled T (Alg 2, below).
- ``auto``: one of these, decided by :class:`ResolveInit` (docs/method.md §13).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import onnx

from icsnn_onnx.calibration.blocks import Block, blocks, run_blocks
from icsnn_onnx.calibration.segments import SpillStore
from icsnn_onnx.contract import BIAS_SITES_KEY, INIT_CANDIDATES_KEY, INIT_FALLBACK_KEY, INIT_METHOD_KEY
from icsnn_onnx.data import Data
from icsnn_onnx.errors import CalibrationError
from icsnn_onnx.neurons import NeuronKind, count_breakpoint, driven
from icsnn_onnx.options import (
    ConversionOptions,
    InitPolicy,
    Layout,
    Target,
    resolve_bias_calibration,
    resolve_init,
)
from icsnn_onnx.passes import Pass, PassManager, PassResult, ensure, require
from icsnn_onnx.passes.graph_utils import channel_shape
from icsnn_onnx.passes.insert_neurons import InsertNeurons
from icsnn_onnx.passes.one_pass import OnePass
from icsnn_onnx.passes.program import ActivationKind, ActivationSite, Program
from icsnn_onnx.passes.scale import MAX_UNROLLED_OPS, estimate
from icsnn_onnx.passes.unroll import Unroll
from icsnn_onnx.progress import ProgressFactory, silent

logger = logging.getLogger(__name__)

#: A bias correction below this fraction of the site's θ is rounding (a first layer's current is
#: the ANN's): not applied.
BIAS_TOLERANCE = 1e-5

#: v(0) as a fraction of θ; Alg 2 (calibrated) starts from θ/2.
INIT_FRACTION = {InitPolicy.ZERO: 0.0, InitPolicy.HALF: 0.5, InitPolicy.CALIBRATED: 0.5}


@dataclass(frozen=True)
class InitCalibration:
    """What Alg 2 found, kept in ``program.init_calibration``."""

    per_site: dict[str, tuple[float, float]]  # site → (error with θ/2, error with the chosen v(0))
    output_errors: tuple[float, float]  # network output vs the ANN: with θ/2, with the chosen v(0)
    kept_half: bool  # the calibrated potentials did worse end to end, so θ/2 was kept
    calibrated: dict[str, np.ndarray]  # the potentials Alg 2 chose (in use unless kept_half)


class ResolveInit(Pass):
    """``--init auto`` → calibrated or half (:func:`~icsnn_onnx.options.resolve_init`), before
    anything depends on it; records the choice (``icsnn.init_method``)."""

    def __init__(self, has_calibration: bool) -> None:
        self.has_calibration = has_calibration

    def ensures(self, program: Program) -> None:
        ensure(program.options.init is not InitPolicy.AUTO, self.name, "init left unresolved")

    def call(self, program: Program) -> PassResult:
        options = program.options
        # Whether Alg 2's unrolled trial SNN fits matters only where auto could choose it.
        could_calibrate = options.init is InitPolicy.AUTO and self.has_calibration
        fits = not could_calibrate or estimate(program).unrolled_ops(options.T) <= MAX_UNROLLED_OPS
        init = resolve_init(options, self.has_calibration, fits)
        program.options = replace(options, init=init)
        program.metadata[INIT_METHOD_KEY] = str(init)
        return PassResult(program, init is not options.init)


def start_fraction(site: ActivationSite, options: ConversionOptions) -> float:
    """Alg 1's v(0)/θ for a site: θ/2, except where the SNN's levels over T steps are the ANN's
    own (a quantized activation with ``L = T·K`` levels): there its rounding offset φ, which makes
    the neuron that quantizer exactly for a constant current (docs/method.md §16)."""
    if options.init is InitPolicy.ZERO:
        return 0.0
    transfer = site.transfer
    if transfer.kind is ActivationKind.QUANTIZED and transfer.levels == options.T * options.levels:
        return float(transfer.offset)
    return 0.5


class InitialPotential(Pass):
    """v(0) = 0 or θ/2, or φ·θ on a quantized site whose levels the SNN matches
    (``program.options.init``; Alg 2 starts from these)."""

    def requires(self, program: Program) -> None:
        missing = set(program.sites) - set(program.thresholds)
        require(not missing, self.name, f"thresholds needed first for {sorted(missing)}")
        require(
            program.options.init in INIT_FRACTION,
            self.name,
            f"init {program.options.init} must be resolved first (ResolveInit)",
        )

    def ensures(self, program: Program) -> None:
        missing = set(program.sites) - set(program.v_init)
        ensure(not missing, self.name, f"sites without v(0): {sorted(missing)}")

    def call(self, program: Program) -> PassResult:
        for name, theta in program.thresholds.items():
            fraction = start_fraction(program.sites[name], program.options)
            program.v_init[name] = (np.asarray(theta) * fraction).astype(np.float32)
        return PassResult(program, True)


class CalibrateInitialPotential(Pass):
    """IC-SNN Alg 2: per-channel v(0) calibrated on data, for the compiled T.

    Sites are calibrated in topological order, in one pass (:mod:`.one_pass`): site ``l``'s
    input currents ``z(1..T)`` are computed once, by its segment of a trial SNN, from the stored
    spikes of the sites before it (already calibrated) — what the finished SNN would feed it.
    For each channel the initial potential ``v(0) = (k/K)·θ``,
    ``k = 0..K-1``, whose mean output over T steps best matches the ANN's activation (least
    squares) is kept. ``K`` is even, so θ/2 (Alg 1) is a candidate and is kept unless another
    is strictly better: on the calibration data each site's error is never worse than Alg 1's.
    Finally, if the network's output is further from the ANN's with the calibrated potentials
    than with θ/2 everywhere (layer-wise least squares does not guarantee it), θ/2 is kept, so
    the result is never worse than Alg 1 end to end on the calibration data either.
    """

    def __init__(
        self,
        calib: Data | None,
        progress: ProgressFactory = silent,
        candidates: int = 16,
        samples: int = 256,
    ) -> None:
        if candidates < 2 or candidates % 2:
            raise ValueError("candidates must be an even number >= 2 (θ/2 must be one of them)")
        self.calib, self.K, self.samples, self.progress = calib, candidates, samples, progress

    def requires(self, program: Program) -> None:
        missing = set(program.sites) - set(program.v_init)
        require(not missing, self.name, f"start values (Alg 1) needed first for {sorted(missing)}")

    def call(self, program: Program) -> PassResult:
        options = program.options
        potentials = options.init is InitPolicy.CALIBRATED  # auto may have resolved to another
        bias = resolve_bias_calibration(options) and self.calib is not None
        if not potentials and not bias:
            return PassResult(program, False)
        if self.calib is None:
            raise CalibrationError("--init calibrated needs calibration data (--calib)")
        data = self.calib.head(self.samples)
        ann = program.to_onnx()
        half_start = dict(program.v_init)
        # One trial SNN (θ/2 everywhere), cut into one segment per site: each site's currents are
        # computed once, from the spikes of the sites before it, already calibrated (one pass).
        snn = self._trial_snn(program, half_start)
        per_site: dict[str, tuple[float, float]] = {}
        biases: dict[str, np.ndarray] = {}
        with SpillStore() as store:
            run = OnePass(program, ann, snn, data, store, self.progress, bias=bias)
            try:
                for index, site in enumerate(run.sites):
                    theta = np.asarray(program.thresholds[site.name], np.float64)
                    batches = run.currents_of(index)
                    if bias:  # the mean current error removed first; Alg 2 then fits v(0) to it
                        for _ in batches:
                            pass
                        delta = run.correct_bias(index)
                        if np.max(np.abs(delta)) > BIAS_TOLERANCE * float(theta.max()):
                            biases[site.name] = delta
                        batches = run.stored_currents(index)
                    if potentials:
                        errors, target_rank = None, 0
                        for target, z in batches:
                            kind = run.kind(index, z.dtype)
                            batch_errors = self._block_errors(kind, z, target, theta, options.T)
                            errors = batch_errors if errors is None else errors + batch_errors
                            target_rank = target.ndim
                        start = round(start_fraction(site, options) * self.K)
                        program.v_init[site.name], per_site[site.name] = self._choose(
                            errors, theta, target_rank, start
                        )
                    else:
                        for _ in batches:  # bias alone: the currents stored, nothing to score
                            pass
                    run.fire(index, program.v_init[site.name])
                if potentials:
                    program.metadata[INIT_CANDIDATES_KEY] = str(self.K)
                # Neither layer-wise fit guarantees a better network output: keep Alg 1's
                # potentials and no bias if the calibrated SNN does worse end to end on this data.
                output_errors = run.output_errors(program.v_init)
            finally:
                run.close()
        calibrated = dict(program.v_init)
        kept_half = output_errors[1] > output_errors[0]
        if kept_half:
            logger.info(
                "calibrated SNN worse at the output on calibration data (%.4g > %.4g); keeping θ/2%s",
                *output_errors[::-1],
                " and no bias correction" if bias else "",
            )
            program.v_init.update(half_start)
            program.metadata[INIT_FALLBACK_KEY] = "half"
        elif biases:
            program.current_bias.update(biases)
        if bias:
            program.metadata[BIAS_SITES_KEY] = str(0 if kept_half else len(biases))
        program.init_calibration = InitCalibration(per_site, output_errors, kept_half, calibrated)
        return PassResult(program, True)

    def _trial_snn(self, program: Program, v_init: dict[str, np.ndarray]) -> onnx.ModelProto:
        """The SNN ``program`` would become with these initial potentials (program untouched)."""
        trial = program.copy()
        trial.v_init.update(v_init)
        # Step-major and portable: the currents are read from its name@t step tensors.
        trial.options = replace(
            program.options, layout=Layout.STEP_MAJOR, target=Target.PORTABLE, per_step=False
        )
        PassManager([InsertNeurons(), Unroll()])(trial)
        return trial.to_onnx()

    def _block_errors(
        self, kind: NeuronKind, z: np.ndarray, target: np.ndarray, theta: np.ndarray, T: int
    ) -> np.ndarray:
        """Squared error per candidate and channel, ``[K, C]`` (one channel when rank < 2), of a
        batch's currents ``z`` (``[T, …]``, or ``[1, …]`` for a current constant over time: a
        first layer under direct coding): one IF run per neuron
        (:func:`~icsnn_onnx.neurons.if_neuron.count_breakpoint`) scored by :meth:`_channel_errors`, block by
        block on every core (:mod:`icsnn_onnx.calibration.blocks`)."""
        channels = target.shape[1] if target.ndim >= 2 else 1
        theta = np.broadcast_to(np.asarray(theta).reshape(-1), (channels,))
        errors = np.zeros((self.K, channels))

        def work(block: Block) -> tuple[slice, np.ndarray]:
            where = block if target.ndim >= 2 else block[:1]
            block_theta = theta[block[1]].reshape(channel_shape(target.ndim, -1) if target.ndim >= 2 else ())
            block_z = z[(slice(None), *where)]
            steps = np.broadcast_to(block_z, (T, *block_z.shape[1:]))
            quantizer, drive = driven(kind, steps)
            parameters = {"theta": block_theta.astype(z.dtype)}
            count, v_star = count_breakpoint(quantizer, drive, parameters)
            part = self._channel_errors(count, v_star, target[where], block_theta, T)
            return block[1] if target.ndim >= 2 else slice(None), part

        for channel, block_errors in run_blocks(work, blocks(target.shape)):
            errors[:, channel] += block_errors
        return errors

    def _channel_errors(
        self, count: np.ndarray, v_star: np.ndarray, target: np.ndarray, theta: np.ndarray, T: int
    ) -> np.ndarray:
        """Squared error per candidate and channel: ``[K, C]`` (one channel when rank < 2).

        From one run from ``v(0) = 0`` (:func:`~icsnn_onnx.neurons.if_neuron.count_breakpoint`), a neuron
        fires ``n`` times, or ``n + 1`` from ``v(0) >= v*`` on; so it adds ``(θn/T − a)²`` to every
        candidate and the difference to ``n + 1``'s error to the candidates from its breakpoint
        on: a histogram over breakpoints, summed up.
        """
        channels = target.shape[1] if target.ndim >= 2 else 1
        shape = channel_shape(target.ndim, channels) if target.ndim >= 2 else ()
        theta = np.broadcast_to(np.asarray(theta, np.float64).reshape(-1), (channels,)).reshape(shape)
        # With r = θn/T and e = r − a: (r − a)² below the breakpoint, and from it on the error
        # grows by (r + θ/T − a)² − (r − a)² = (θ/T)·(2e + θ/T).
        error = theta * count / T - target
        jump = (theta / T) * (2 * error + theta / T)
        # The first candidate k with k·θ/K >= v* (K: none), exact at the boundary.
        v_star = v_star.astype(np.float64)
        with np.errstate(invalid="ignore"):
            first = np.clip(np.ceil(v_star * (self.K / theta)), 0, self.K)
        first -= (first > 0) & (theta * (first - 1) / self.K >= v_star)
        channel = np.broadcast_to(np.arange(channels).reshape(shape), target.shape)
        index = channel * (self.K + 1) + first.astype(np.int64)
        jumps = np.bincount(index.ravel(), jump.ravel(), channels * (self.K + 1))
        base = np.bincount(channel.ravel(), (error**2).ravel(), channels)
        return base + np.cumsum(jumps.reshape(channels, self.K + 1)[:, : self.K], axis=1).T

    def _choose(
        self, errors: np.ndarray, theta: np.ndarray, rank: int, half: int
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """The per-channel v(0) and the site's error with Alg 1's start (candidate ``half``: θ/2,
        or φ·θ on a quantized site, :func:`start_fraction`) and with it."""
        best = errors.argmin(axis=0)
        # Keep Alg 1's start unless a candidate is strictly better: never worse than Alg 1.
        best = np.where(errors[best, np.arange(errors.shape[1])] < errors[half], best, half)
        report = (float(errors[half].sum()), float(errors[best, np.arange(errors.shape[1])].sum()))
        fraction = best / self.K
        if rank >= 2:
            fraction = fraction.reshape(channel_shape(rank, fraction.size))
        else:
            fraction = fraction.reshape(())
        return (theta * fraction).astype(np.float32), report
