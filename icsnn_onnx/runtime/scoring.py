"""Accuracy of several models on the same data, on Ray (``eval``/``tune --engine ray``).

Each worker holds one session per model and runs every chunk through all of them, so the data
is read once however many models (an SNN and its ANN, or ``tune``'s candidate T values) are
scored. A chunk returns counts — samples, correct predictions after T and after each step,
agreements with a reference model — and the totals are sums, so they equal the single-process
:func:`.evaluate.evaluate` exactly (accuracy = correct / samples either way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from icsnn_onnx.data import Data, Dataset
from icsnn_onnx.errors import DataError, ProviderUnavailableError
from icsnn_onnx.model_io import load_model
from icsnn_onnx.runtime.engine import ChunkWorker, RayEngine, run, threads_per_worker
from icsnn_onnx.runtime.evaluate import predict
from icsnn_onnx.runtime.providers import CUDA
from icsnn_onnx.runtime.session import Session

ModelSource = str | Path | bytes | onnx.ModelProto


@dataclass(frozen=True)
class Scores:
    """Per model: accuracy (``None`` without labels), accuracy after each step (models with
    per-step outputs) and agreement with the reference model (the share of samples where both
    predict the same class)."""

    samples: int
    accuracy: dict[str, float | None]
    per_step_accuracy: dict[str, tuple[float, ...] | None]
    agreement: dict[str, float]


class Scorer(ChunkWorker):
    """The Ray actor: one session per model, for the actor's life."""

    def setup(
        self, models: dict[str, bytes], output: str | None, reference: str | None, provider: str
    ) -> None:
        threads = threads_per_worker() if provider == "cpu" else None
        self.sessions = {name: Session(m, provider=provider, threads=threads) for name, m in models.items()}
        if provider == "cuda" and any(s.provider != CUDA for s in self.sessions.values()):
            raise ProviderUnavailableError("a Ray worker given a GPU cannot run ONNX Runtime's CUDA provider")
        self.output, self.reference = output, reference

    def chunk(self, data: Dataset) -> dict[str, np.ndarray]:
        found = {name: predict(s, data, self.output, self.batch_size) for name, s in self.sessions.items()}
        first = next(iter(found.values()))
        counts: dict[str, np.ndarray] = {
            "samples": np.asarray(len(first.classes)),
            "labelled": np.asarray(first.labels is not None),
        }
        for index, p in enumerate(found.values()):
            if p.labels is not None:
                counts[f"correct{index}"] = np.asarray(np.count_nonzero(p.classes == p.labels))
                if p.steps is not None:
                    counts[f"steps{index}"] = np.count_nonzero(p.steps == p.labels[None, :], axis=1)
            if self.reference is not None:
                counts[f"agree{index}"] = np.asarray(
                    np.count_nonzero(p.classes == found[self.reference].classes)
                )
        return counts


def score(
    models: Mapping[str, ModelSource],
    data: Data,
    engine: RayEngine,
    *,
    reference: str | None = None,
    output: str | None = None,
    batch_size: int = 64,
    what: str = "data",
) -> Scores:
    """Score ``models`` (by name) on ``data`` with ``engine``'s workers (see the module docstring)."""
    if reference is not None and reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models {sorted(models)}")
    names = list(models)
    serialized = {name: _bytes(m) for name, m in models.items()}
    specs = Session(serialized[names[0]], provider="cpu").inputs
    totals: dict[str, np.ndarray] = {}
    labelled: set[bool] = set()
    arguments = {
        "specs": specs,
        "models": serialized,
        "output": output,
        "reference": reference,
        "provider": engine.provider,
    }
    for row in run(engine, data, Scorer, arguments, batch_size=batch_size, what=what):
        labelled.add(bool(row.pop("labelled")))
        for key, value in row.items():
            totals[key] = totals[key] + value if key in totals else np.asarray(value)
    if len(labelled) > 1:
        raise DataError(f"{what}: some parts have labels 'y' and some do not: label every part or none")
    n = int(totals["samples"])
    accuracy = {name: _ratio(totals.get(f"correct{i}"), n) for i, name in enumerate(names)}
    steps = {
        name: tuple(int(c) / n for c in totals[f"steps{i}"]) if f"steps{i}" in totals else None
        for i, name in enumerate(names)
    }
    agreement = {name: int(totals[f"agree{i}"]) / n for i, name in enumerate(names) if f"agree{i}" in totals}
    return Scores(n, accuracy, steps, agreement)


def _ratio(count: np.ndarray | None, n: int) -> float | None:
    return None if count is None else int(count) / n


def _bytes(model: ModelSource) -> bytes:
    """The model as bytes for the workers, external data included (read here, where the path is)."""
    return model if isinstance(model, bytes) else load_model(model).SerializeToString()
