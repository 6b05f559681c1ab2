"""ANN vs SNN timing in one process: interleaved runs, medians, the ratio to the dense bound.

A dense simulation of an SNN costs at most T times its ANN; ``ratio = SNN / (T × ANN)`` says how
far below (< 1) or above that bound the converted model runs. ``T × ANN`` is measured as what it
says, T ANN passes back to back: the ANN is timed in blocks of T runs, each block alternating with
one SNN run.
"""

from __future__ import annotations

import contextlib
import math
import resource
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from icsnn_onnx.data import InputSpec, check_same_inputs, input_specs
from icsnn_onnx.errors import DataError
from icsnn_onnx.limits import check_allocation
from icsnn_onnx.model_io import load_model
from icsnn_onnx.runtime.session import Session


@dataclass(frozen=True)
class Timing:
    median_s: float
    runs_s: tuple[float, ...]
    images_per_s: float


@dataclass(frozen=True)
class BenchResult:
    batch: int
    provider: str
    cuda_graph: bool
    T: int
    ann: Timing  # per ANN pass, from blocks of T back-to-back passes
    snn: Timing
    ratio_to_dense_bound: float  # SNN / (T × ANN)
    peak_rss_mib: float  # the whole process: both sessions
    snn_peak_rss_mib: float  # before the ANN was loaded: the SNN's first two runs

    def as_dict(self) -> dict:
        return asdict(self)


def random_feeds(specs: list[InputSpec], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the model's shapes (dynamic dimensions: batch first, else 1), in [0, 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    shapes = {
        spec.name: [
            d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(spec.shape)
        ]
        for spec in specs
    }
    size = sum(math.prod(shapes[s.name]) * s.dtype.itemsize for s in specs)
    check_allocation(size, f"a batch of {batch} inputs", DataError, "use a smaller --batch")
    for spec in specs:
        shape = shapes[spec.name]
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.random(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
    return feeds


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB).

    On Linux the kernel's high-water mark of this address space (``VmHWM``): ``ru_maxrss`` is kept
    across ``exec``, so in a freshly started worker it would still report its parent's peak.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _timing(runs: list[float], batch: int) -> Timing:
    median = statistics.median(runs)
    return Timing(median, tuple(runs), batch / median)


def bench(
    ann: str | Path,
    snn: str | Path,
    batch: int = 64,
    provider: str = "auto",
    repeats: int | None = None,
    warmup: int = 1,
    cuda_graph: bool = False,
    threads: int | None = None,
    min_seconds: float = 3.0,
    fixed: Mapping[str, object] | None = None,
) -> BenchResult:
    """Time ``ann`` and ``snn`` on the same random batch, alternating a block of T ANN runs
    (one sample: the block's time / T) with one SNN run.

    Blocks, not single ANN runs: right after an SNN run a small ANN starts with caches (and idle
    threads) the SNN left behind, and one run at a time would time mostly that (MNIST CNN, batch
    64, T=32: 2.1 ms per run instead of 1.7, which flattered the ratio by a quarter); the SNN pays
    its own start once per T steps, and so does a block.

    ``repeats=None`` picks enough interleaved pairs to fill about ``min_seconds`` (at least 5,
    at most 500): a small ANN's few-millisecond runs need many samples for a stable median.
    """
    snn_session = Session(
        snn, provider=provider, cuda_graph=cuda_graph, threads=threads, spin=False, fixed=fixed
    )
    T = snn_session.snn.T if snn_session.snn else 0
    if T < 1:
        raise DataError(f"{snn} is not an icsnn-onnx SNN (no icsnn.T in its metadata)")
    check_same_inputs(snn_session.inputs, input_specs(load_model(ann, external_data=False)), str(ann))
    feeds = random_feeds(snn_session.inputs, batch)
    run_snn = snn_session.runner(feeds)
    # Alone first, so that its own peak memory can be told apart; twice, because ONNX Runtime
    # plans its memory pattern on the first run and allocates it on the second.
    run_snn()
    run_snn()
    snn_peak = peak_rss_mib()
    ann_session = Session(
        ann, provider=provider, cuda_graph=cuda_graph, threads=threads, spin=False, fixed=fixed
    )
    if [s.name for s in ann_session.inputs] != [s.name for s in snn_session.inputs]:
        raise DataError("ANN and SNN have different inputs")
    run_ann = ann_session.runner(feeds)

    def run_ann_block() -> None:
        for _ in range(T):
            run_ann()

    pair_s = 0.0
    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        run_ann_block()
        run_snn()
        pair_s = time.perf_counter() - start
    if repeats is None:
        repeats = int(min(500, max(5, min_seconds / max(pair_s, 1e-6))))
    ann_runs, snn_runs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        run_ann_block()
        ann_runs.append((time.perf_counter() - start) / T)
        start = time.perf_counter()
        run_snn()
        snn_runs.append(time.perf_counter() - start)
    ann_t, snn_t = _timing(ann_runs, batch), _timing(snn_runs, batch)
    return BenchResult(
        batch=batch,
        provider=snn_session.provider,
        cuda_graph=snn_session.cuda_graph,
        T=T,
        ann=ann_t,
        snn=snn_t,
        ratio_to_dense_bound=snn_t.median_s / (T * ann_t.median_s),
        peak_rss_mib=peak_rss_mib(),
        snn_peak_rss_mib=snn_peak,
    )
