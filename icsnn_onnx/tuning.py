"""Pick the smallest T (and, with graded spikes, the (T, K) pairs) whose SNN accuracy is within
``max_drop`` points of the ANN.

Choose on held-out data (a validation split), never on the test set you report.

- With several ``levels`` K (graded spikes, K = 1 binary), the search below runs for each K, and
  each K's smallest T within target is measured for its synaptic operations per sample
  (:func:`icsnn_onnx.analysis.report.report` on up to :data:`COST_SAMPLES` samples): the result
  names the fastest pair (least T; fewer SOPs break a tie), the cheapest (fewest SOPs) and the one
  of least estimated energy (a graded SOP costs a multiply-accumulate). A larger
  T for the same K only adds steps, so only the least is measured.

- ``init`` ``half``/``zero`` with a percentile or ``max`` threshold: neither v(0) nor θ
  depends on T, so one conversion at ``max_T`` with per-step outputs gives the accuracy at
  every T ≤ ``max_T`` exactly (entry t-1 is the SNN compiled for T = t: the compensated
  read-out after t steps uses v(t), the rate encoder's counts and the Poisson noise of the
  first t steps do not depend on T).
- ``init`` ``calibrated`` or ``threshold`` ``mse``/``auto`` (the default): v(0) or θ is fitted
  for the compiled T, so T = 1, 2, 4, … is compiled and evaluated in turn until the target is
  met.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import onnx

from icsnn_onnx.analysis.report import report
from icsnn_onnx.converter import ModelSource, convert
from icsnn_onnx.data import Data, DataSource, fixed_values, input_specs, load_dataset, sample_specs
from icsnn_onnx.errors import CalibrationError, DataError, OptionError
from icsnn_onnx.model_io import load_model
from icsnn_onnx.options import ConversionOptions, threshold_depends_on_T
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.runtime import Session, evaluate
from icsnn_onnx.runtime.engine import RayEngine, connect, ray_errors
from icsnn_onnx.runtime.scoring import score

#: Samples of the tuning data a candidate's synaptic operations are measured on.
COST_SAMPLES = 256


@dataclass(frozen=True)
class Candidate:
    """A (T, K) pair within target, measured: accuracy, SOPs and energy estimate per sample."""

    T: int
    levels: int
    accuracy: float
    sops: float
    joules: float


@dataclass(frozen=True)
class TuneResult:
    ann_accuracy: float
    accuracy_by_T: dict[int, float]  # every T tried (for the first K of ``levels``)
    chosen_T: int | None  # None: no T ≤ max_T reaches the target (the fastest pair's T)
    max_drop: float  # in accuracy points (percent)
    accuracy_by_pair: dict[tuple[int, int], float] = field(default_factory=dict)  # (T, K) → accuracy
    candidates: tuple[Candidate, ...] = ()  # each K's least T within target, measured (several K)
    fastest: Candidate | None = None  # least T, then fewest SOPs
    cheapest: Candidate | None = None  # fewest synaptic operations per sample
    least_energy: Candidate | None = None  # lowest energy estimate (graded SOPs cost a multiply)

    @property
    def chosen_levels(self) -> int | None:
        return self.fastest.levels if self.fastest is not None else None


def tune(
    model: ModelSource,
    calib: DataSource | None,
    data: DataSource,
    *,
    options: ConversionOptions | None = None,
    max_drop: float = 0.5,
    max_T: int = 64,
    progress: ProgressFactory = silent,
    engine: RayEngine | None = None,
    fixed: Mapping[str, object] | None = None,
    levels: Sequence[int] | None = None,
    **fields: object,
) -> TuneResult:
    """The smallest T ≤ ``max_T`` whose SNN, built as ``options`` says (its ``T`` and ``per_step``
    aside), is within ``max_drop`` accuracy points of the ANN on ``data``. ``options`` or its
    fields as keywords, as for :func:`~icsnn_onnx.convert`. With an ``engine``, the candidate
    SNNs (T = 1, 2, 4, … ≤ ``max_T``, all of them) are converted in parallel on its Ray workers
    and scored together in one pass over the data; the table then lists every candidate. With
    ``levels`` (several K; default ``options.levels`` alone) each K is searched and the pairs
    within target compared by latency and by synaptic operations (module doc)."""
    if options is None:
        options = ConversionOptions(**fields)  # type: ignore[arg-type]
    elif fields:
        raise TypeError(f"give options or keyword fields, not both (got {sorted(fields)})")
    if not 0 <= max_drop <= 100:  # NaN fails too
        raise ValueError(f"max_drop must be accuracy points in [0, 100], got {max_drop}")
    if isinstance(max_T, bool) or not isinstance(max_T, int) or max_T < 1:
        raise ValueError(f"max_T must be a positive integer, got {max_T!r}")
    ks = _levels(levels, options)
    source = load_model(model)
    specs = sample_specs(input_specs(source), fixed_values(fixed, input_specs(source)))
    dataset = load_dataset(data, specs, what="tuning data").reusable()  # once per T
    if calib is not None:  # opened once, not once per conversion
        calib = load_dataset(calib, specs, what="calibration data", error=CalibrationError)
        calib = calib.reusable()
    stepwise = (
        options.init in ("half", "zero")
        and not threshold_depends_on_T(options.threshold)
        and not options.bias_calibration  # a bias fitted to the compiled T
    )
    if engine is not None:
        if fixed:
            raise OptionError("tune --engine ray does not take fixed inputs yet: tune locally")
        if len(ks) > 1:
            raise OptionError("tune --engine ray searches one --levels value: tune several locally")
        options = replace(options, levels=ks[0])
        return _tune_distributed(source, calib, dataset, options, stepwise, max_drop, max_T, engine)
    ann = evaluate(Session(source, provider="cpu", fixed=fixed), dataset, progress=progress).accuracy
    if ann is None:
        raise DataError("tuning data needs integer labels 'y'")
    tables = {
        k: _search(
            source,
            calib,
            dataset,
            replace(options, levels=k),
            stepwise,
            _target(ann, max_drop),
            max_T,
            progress,
            fixed,
        )
        for k in ks
    }
    first = _result(ann, tables[ks[0]], max_drop)
    pairs = {(T, k): acc for k, table in tables.items() for T, acc in table.items()}
    if len(ks) == 1:
        return replace(first, accuracy_by_pair=pairs)
    measured = []
    for k, table in tables.items():
        least = _result(ann, table, max_drop).chosen_T
        if least is not None:
            snn = convert(
                source,
                calib,
                options=replace(options, T=least, levels=k, per_step=False),
                progress=progress,
                fixed=fixed,
            )
            cost = report(snn, dataset.head(COST_SAMPLES), provider="cpu", fixed=fixed).energy
            measured.append(
                Candidate(least, k, table[least], cost["sops_per_sample"], cost["snn_joules_per_sample"])
            )
    fastest = min(measured, key=lambda c: (c.T, c.sops), default=None)
    cheapest = min(measured, key=lambda c: (c.sops, c.T), default=None)
    least_energy = min(measured, key=lambda c: (c.joules, c.T), default=None)
    return TuneResult(
        ann,
        first.accuracy_by_T,
        fastest.T if fastest is not None else None,
        max_drop,
        pairs,
        tuple(measured),
        fastest,
        cheapest,
        least_energy,
    )


def _levels(levels: Sequence[int] | None, options: ConversionOptions) -> tuple[int, ...]:
    if levels is None:
        return (options.levels,)
    ks = tuple(dict.fromkeys(levels))
    if not ks:
        raise ValueError("levels: give at least one K")
    for k in ks:
        replace(options, levels=k)  # validated as the option is
    return ks


def _search(
    source: onnx.ModelProto,
    calib: Data | None,
    dataset: Data,
    options: ConversionOptions,
    stepwise: bool,
    target: float,
    max_T: int,
    progress: ProgressFactory,
    fixed: Mapping[str, object] | None,
) -> dict[int, float]:
    """Accuracy by T for ``options`` (one K): every step of one SNN at ``max_T``, or T = 1, 2, 4,
    … until ``target``."""
    table: dict[int, float] = {}
    if stepwise:
        snn = convert(
            source, calib, options=replace(options, T=max_T, per_step=True), progress=progress, fixed=fixed
        )
        steps = evaluate(
            Session(snn, provider="cpu", fixed=fixed), dataset, progress=progress
        ).per_step_accuracy
        table = {t: acc for t, acc in enumerate(steps, start=1)}
    else:
        T = 1
        while T <= max_T:
            snn = convert(
                source, calib, options=replace(options, T=T, per_step=False), progress=progress, fixed=fixed
            )
            table[T] = evaluate(
                Session(snn, provider="cpu", fixed=fixed), dataset, progress=progress
            ).accuracy
            if table[T] >= target:
                break
            T *= 2
    return table


def _result(ann: float, table: dict[int, float], max_drop: float) -> TuneResult:
    """The smallest T of ``table`` within ``max_drop`` points of the ANN's accuracy ``ann``."""
    chosen = next((t for t in sorted(table) if table[t] >= _target(ann, max_drop)), None)
    return TuneResult(ann, table, chosen, max_drop)


def _target(ann: float, max_drop: float) -> float:
    return ann - max_drop / 100.0


def _tune_distributed(
    source: onnx.ModelProto,
    calib: Data | None,
    data: Data,
    options: ConversionOptions,
    stepwise: bool,
    max_drop: float,
    max_T: int,
    engine: RayEngine,
) -> TuneResult:
    ray = connect(engine)
    if stepwise:
        candidates = [replace(options, T=max_T, per_step=True)]
    else:
        candidates = [replace(options, T=1 << k, per_step=False) for k in range(max_T.bit_length())]
    task = ray.remote(num_cpus=1, num_gpus=0)(_convert_bytes)
    model = source.SerializeToString()
    jobs = [task.remote(model, calib, o) for o in candidates]
    with ray_errors():
        snns = ray.get(jobs)
    models = {"ann": model} | {f"T={o.T}": snn for o, snn in zip(candidates, snns, strict=True)}
    scores = score(models, data, engine, what="tuning data")
    ann = scores.accuracy["ann"]
    if ann is None:
        raise DataError("tuning data needs integer labels 'y'")
    if stepwise:
        steps = scores.per_step_accuracy[f"T={max_T}"] or ()
        table = {t: acc for t, acc in enumerate(steps, start=1)}
    else:
        table = {o.T: scores.accuracy[f"T={o.T}"] or 0.0 for o in candidates}
    pairs = {(T, options.levels): acc for T, acc in table.items()}
    return replace(_result(ann, table, max_drop), accuracy_by_pair=pairs)


def _convert_bytes(model: bytes, calib: Data | None, options: ConversionOptions) -> bytes:
    """One candidate's conversion, as a Ray task."""
    return convert(model, calib, options=options).SerializeToString()
