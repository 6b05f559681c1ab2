"""Pick the smallest T whose SNN accuracy is within ``max_drop`` points of the ANN.

Choose on held-out data (a validation split), never on the test set you report.

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

from dataclasses import dataclass

from icsnn_onnx.converter import ModelSource, convert
from icsnn_onnx.data import DataSource, input_specs, load_dataset
from icsnn_onnx.errors import DataError
from icsnn_onnx.model_io import load_model
from icsnn_onnx.options import DEFAULT_MAXPOOL, threshold_depends_on_T
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.runtime import Session, evaluate


@dataclass(frozen=True)
class TuneResult:
    ann_accuracy: float
    accuracy_by_T: dict[int, float]  # every T tried
    chosen_T: int | None  # None: no T ≤ max_T reaches the target
    max_drop: float  # in accuracy points (percent)


def tune(
    model: ModelSource,
    calib: DataSource | None,
    data: DataSource,
    *,
    max_drop: float = 0.5,
    init: str = "half",
    max_T: int = 64,
    threshold: str = "auto",
    channel_wise: bool = False,
    compensation: bool = True,
    encoding: str = "direct",
    maxpool: str = DEFAULT_MAXPOOL,
    seed: int = 0,
    progress: ProgressFactory = silent,
) -> TuneResult:
    if max_drop < 0:
        raise ValueError("max_drop must be >= 0")
    source = load_model(model)
    dataset = load_dataset(data, input_specs(source), what="tuning data")
    if dataset.labels is None:
        raise DataError("tuning data needs integer labels 'y'")
    ann = evaluate(Session(source, provider="cpu"), dataset, progress=progress).accuracy
    target = ann - max_drop / 100.0
    options = {
        "threshold": threshold,
        "channel_wise": channel_wise,
        "init": init,
        "compensation": compensation,
        "encoding": encoding,
        "maxpool": maxpool,
        "seed": seed,
        "progress": progress,
    }
    table: dict[int, float] = {}
    if init in ("half", "zero") and not threshold_depends_on_T(threshold):
        snn = convert(source, calib, T=max_T, per_step=True, **options)
        steps = evaluate(Session(snn, provider="cpu"), dataset, progress=progress).per_step_accuracy
        table = {t: acc for t, acc in enumerate(steps, start=1)}
    else:
        T = 1
        while T <= max_T:
            snn = convert(source, calib, T=T, **options)
            table[T] = evaluate(Session(snn, provider="cpu"), dataset, progress=progress).accuracy
            if table[T] >= target:
                break
            T *= 2
    chosen = next((t for t in sorted(table) if table[t] >= target), None)
    return TuneResult(ann, table, chosen, max_drop)
