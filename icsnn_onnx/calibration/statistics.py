"""Activation statistics on calibration data, computed by ONNX Runtime in bounded memory.

The ANN streams batch by batch through ONNX Runtime with the requested tensors exposed as extra
outputs. Memory depends on the number of channels, never on the number of samples:

- ``max``: a running maximum (per channel or per layer).
- percentile ``q``: a second pass fills a fixed histogram of ``BINS`` bins over ``[0, max]``
  per channel; the percentile (numpy's definition: linear between the order statistics around
  rank ``q/100·(n-1)``) is read off the cumulative counts, each order statistic located within
  its bin (error at most ``max / BINS``).

Statistics are of the ReLU'd pre-activation ``max(z, 0)`` — the ANN's activation values — or,
for a tensor given as a magnitude (a signed neuron's activation ``f(z)``), of ``|a|``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from icsnn_onnx.data import Data, Dataset
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.runtime.engine import ChunkWorker, RayEngine, run, threads_per_worker
from icsnn_onnx.runtime.instrument import expose
from icsnn_onnx.runtime.session import Session

logger = logging.getLogger(__name__)

BINS = 2048


def stream_tensors(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    data: Data,
    batch_size: int = 64,
    progress: ProgressFactory = silent,
    desc: str = "calibrating",
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model`` on ``data`` batch by batch, yielding the named (intermediate) tensors."""
    session = Session(expose(model, tensors), provider="cpu")
    yield from session.iter_run(data, batch_size, list(tensors), progress, desc)


def run_batches(
    model: onnx.ModelProto,
    feeds: Iterable[dict[str, np.ndarray]],
    outputs: Sequence[str],
    threads: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model`` (a segment, :mod:`icsnn_onnx.calibration.segments`) on each feed dict in turn. With all
    graph optimizations, as a deployed model runs: the CPU provider's blocked-layout convolutions
    round differently from the plain ones, and an SNN amplifies that (ResNet-18, T=4: output error
    0.922 against 0.950 at the first flipped spikes), so segments compute what the finished SNN
    will. Idle threads sleep instead of spinning, so work beside it (Alg 2's numpy, its
    reference run) keeps the cores."""
    session = Session(model, provider="cpu", threads=threads, spin=False)
    for feed in feeds:
        yield session.run(feed, list(outputs))


def _rows_per_channel(a: np.ndarray, channel_wise: bool) -> np.ndarray:
    """``a`` as ``[channels, values]`` (one row when layer-wise)."""
    if channel_wise and a.ndim >= 2:
        return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
    return a.reshape(1, -1)


def activation_thresholds(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    data: Data,
    *,
    percentile: float | None,
    channel_wise: bool,
    levels: int | None = None,
    bounds: Mapping[str, float] | None = None,
    magnitudes: Sequence[str] = (),
    batch_size: int = 64,
    progress: ProgressFactory = silent,
    engine: RayEngine | None = None,
) -> dict[str, np.ndarray]:
    """Per tensor, a statistic of ``a = max(z, 0)`` (``min(max(z, 0), λ)`` for a tensor with a
    bound λ in ``bounds``: a clipped activation's values; ``|a|`` for a tensor in ``magnitudes``,
    a signed neuron's activation): shape ``[C]`` or ``[1]``.

    The max; or the ``percentile``; or, with ``levels`` = T (T·K with graded spikes), the θ
    minimizing the squared error of ``a`` rounded to the levels ``k·θ/levels``, ``k = 0..levels``
    (the quantization a neuron started at θ/2 applies to a constant current, docs/method.md eq. 2
    and §16). With an ``engine``, the
    batches run on its Ray workers, with the same result.
    """
    names = list(tensors)
    statistics = _Statistics(names, channel_wise, dict(bounds or {}), frozenset(magnitudes))
    if engine is not None:
        maxima, hist = _distributed(
            engine, expose(model, names), statistics, data, batch_size, levels, percentile
        )
    else:
        maxima = statistics.all_maxima(
            stream_tensors(model, names, data, batch_size, progress, "calibrating (max)")
        )
        hist = None
        if levels is not None or (percentile is not None and percentile < 100.0):
            what = f"{levels} levels" if levels is not None else f"p{percentile:g}"
            outs = stream_tensors(model, names, data, batch_size, progress, f"calibrating ({what})")
            hist = statistics.all_histograms(outs, maxima)
    if hist is None:
        return maxima
    if levels is not None:
        return {name: _least_squares_threshold(hist[name], maxima[name], levels) for name in names}
    return {name: _percentile_from_histogram(hist[name], maxima[name], percentile) for name in names}


@dataclass(frozen=True)
class _Statistics:
    """One batch's contribution to the statistics: maxima, then histograms over ``[0, max]``.
    Both merge exactly in any order (a maximum, integer counts), across batches or workers."""

    names: list[str]
    channel_wise: bool
    bounds: dict[str, float]
    magnitudes: frozenset[str] = frozenset()

    def _activation(self, out: Mapping[str, np.ndarray], name: str) -> np.ndarray:
        a = np.abs(out[name]) if name in self.magnitudes else np.clip(out[name], 0, self.bounds.get(name))
        return _rows_per_channel(a, self.channel_wise)

    def maxima(self, out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: self._activation(out, name).max(axis=1).astype(np.float64) for name in self.names}

    @staticmethod
    def merge_maxima(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.maximum(a[name], m) if name in a else m for name, m in b.items()}

    @staticmethod
    def merge_histograms(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: a[name] + h if name in a else h for name, h in b.items()}

    def all_maxima(self, outs: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The maxima over every batch of ``outs``."""
        found: dict[str, np.ndarray] = {}
        for out in outs:
            found = self.merge_maxima(found, self.maxima(out))
        return found

    def all_histograms(
        self, outs: Iterable[Mapping[str, np.ndarray]], maxima: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The histograms over ``[0, max]`` of every batch of ``outs``."""
        found = {name: np.zeros((len(m), BINS), np.int64) for name, m in maxima.items()}
        for out in outs:
            found = self.merge_histograms(found, self.histograms(out, maxima))
        return found

    def histograms(
        self, out: Mapping[str, np.ndarray], maxima: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        found = {}
        for name in self.names:
            values = self._activation(out, name).astype(np.float64)
            top = np.where(maxima[name] > 0, maxima[name], 1.0)[:, None]
            bins = np.minimum((values / top * BINS).astype(np.int64), BINS - 1)
            rows = np.arange(len(values))[:, None] * BINS
            found[name] = np.bincount((rows + bins).ravel(), minlength=len(values) * BINS).reshape(-1, BINS)
        return found


class _StatisticsWorker(ChunkWorker):
    """The Ray actor of :func:`_distributed`: the ANN with its tensors exposed, one session."""

    def setup(self, model: bytes, statistics: _Statistics, maxima: dict[str, np.ndarray] | None) -> None:
        self.session = Session(model, provider="cpu", threads=threads_per_worker())
        self.statistics, self.maxima = statistics, maxima

    def chunk(self, data: Dataset) -> dict[str, np.ndarray]:
        names = self.statistics.names
        outs = self.session.iter_run(data, self.batch_size, names)
        if self.maxima is None:
            found = self.statistics.all_maxima(outs)
        else:
            found = self.statistics.all_histograms(outs, self.maxima)
        return {f"t{i}": found[name] for i, name in enumerate(names)}  # Ray columns: plain names


def _distributed(
    engine: RayEngine,
    model: onnx.ModelProto,
    statistics: _Statistics,
    data: Data,
    batch_size: int,
    levels: int | None,
    percentile: float | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The same maxima and histograms as one process, from ``engine``'s workers (two passes)."""
    serialized, names = model.SerializeToString(), statistics.names
    specs = Session(serialized, provider="cpu").inputs

    def reduce(maxima: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        arguments = {"specs": specs, "model": serialized, "statistics": statistics, "maxima": maxima}
        total: dict[str, np.ndarray] = {}
        for row in run(
            engine, data, _StatisticsWorker, arguments, batch_size=batch_size, what="calibration data"
        ):
            part = {name: row[f"t{i}"] for i, name in enumerate(names)}
            merge = statistics.merge_maxima if maxima is None else statistics.merge_histograms
            total = merge(total, part)
        return total

    maxima = reduce(None)
    if levels is None and (percentile is None or percentile >= 100.0):
        return maxima, None
    return maxima, reduce(maxima)


def _least_squares_threshold(
    hist: np.ndarray, top: np.ndarray, levels: int, candidates: int = 256, budget: int = 1 << 22
) -> np.ndarray:
    """Per row, the θ in ``{j/candidates · top}`` minimizing ``Σ h_b (q(c_b) − c_b)²`` over the bin
    centres ``c_b``, where ``q(a) = θ/T · min(floor(a·T/θ + 1/2), T)`` (rounding, saturating at θ).

    Each level ``k·θ/T`` takes a contiguous run of bins, so its error is
    ``S2 − 2·L·S1 + L²·S0`` from prefix sums of ``h``, ``h·c`` and ``h·c²``: O(T) per candidate
    instead of O(bins). In units of ``top`` the runs' bounds are the same for every row, and the
    error scales by ``top²``, which leaves the argmin alone. ``budget`` bounds the gathered
    ``[rows, candidates, T + 1]`` arrays.
    """
    bins = hist.shape[1]
    centres = (np.arange(bins) + 0.5) / bins  # in units of the row's top
    weights = hist.astype(np.float64)
    zero = np.zeros((len(weights), 1))
    prefix = [
        np.concatenate([zero, np.cumsum(weights * centres**power, axis=1)], axis=1) for power in range(3)
    ]
    fraction = np.arange(1, candidates + 1) / candidates  # θ / top
    step = fraction[:, None] / levels
    k = np.arange(levels + 1)
    # Level k holds the centres with floor(c/step + 1/2) = k, i.e. c >= (k − 1/2)·step; T saturates.
    lower = np.searchsorted(centres, (k[None, :] - 0.5) * step, side="left")
    lower[:, 0] = 0
    upper = np.concatenate([lower[:, 1:], np.full((candidates, 1), bins)], axis=1)
    level = k[None, :] * step
    result = np.zeros(len(weights))
    rows = max(1, budget // (candidates * (levels + 1)))
    for start in range(0, len(weights), rows):
        s0, s1, s2 = (p[start : start + rows][:, upper] - p[start : start + rows][:, lower] for p in prefix)
        errors = (s2 - 2 * level * s1 + level**2 * s0).sum(axis=2)
        result[start : start + rows] = fraction[np.argmin(errors, axis=1)] * top[start : start + rows]
    return np.where(top > 0, result, 0.0)


def _order_statistic(hist: np.ndarray, top: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Estimate of the k-th smallest value (0-based) per row: its bin, and its rank inside it."""
    cumulative = np.cumsum(hist, axis=1)
    index = np.minimum((cumulative <= k[:, None]).sum(axis=1), hist.shape[1] - 1)
    rows = np.arange(len(hist))
    below = np.where(index > 0, cumulative[rows, np.maximum(index - 1, 0)], 0)
    inside = (k - below + 0.5) / np.maximum(hist[rows, index], 1)
    return (index + np.clip(inside, 0.0, 1.0)) / hist.shape[1] * top


def _percentile_from_histogram(hist: np.ndarray, top: np.ndarray, q: float) -> np.ndarray:
    """``np.percentile``'s definition (linear between order statistics), from the histogram;
    each order statistic is located within one bin, so the error is at most ``top / BINS``."""
    n = hist.sum(axis=1)
    rank = q / 100.0 * (n - 1)
    low = np.floor(rank)
    frac = rank - low
    high = np.minimum(low + 1, n - 1)
    return (1 - frac) * _order_statistic(hist, top, low) + frac * _order_statistic(hist, top, high)
