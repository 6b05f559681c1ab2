"""Classification accuracy of a model on labelled data, per time step when available."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icsnn_onnx.data import Data
from icsnn_onnx.errors import DataError
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.runtime.batching import iter_labelled
from icsnn_onnx.runtime.session import Session


def predicted_labels(values: np.ndarray) -> np.ndarray:
    """Class labels from an output: integer labels as they are, scores by argmax."""
    if values.dtype.kind in "iu" and values.ndim == 1:
        return values.astype(np.int64)
    if values.ndim < 2:
        raise DataError(f"cannot read class predictions from an output of shape {values.shape}")
    return values.reshape(len(values), -1).argmax(axis=1)


@dataclass(frozen=True)
class Evaluation:
    output: str
    samples: int
    predictions: np.ndarray
    accuracy: float | None  # None without labels
    per_step_accuracy: tuple[float, ...] | None = None  # entry t-1: after t steps

    def agreement(self, other: Evaluation) -> float:
        """Fraction of samples where both models predict the same class."""
        return float(np.mean(self.predictions == other.predictions))


def _per_step(session: Session) -> dict[str, str]:
    return session.snn.per_step if session.snn is not None else {}


def default_output(session: Session) -> str:
    per_step = set(_per_step(session).values())
    return next(n for n in session.output_names if n not in per_step)


@dataclass(frozen=True)
class Predictions:
    """A model's predicted classes on data, after T (``steps``: ``[T, N]`` after each step, where
    the model has per-step outputs), and the data's labels where it has them."""

    output: str
    classes: np.ndarray
    steps: np.ndarray | None
    labels: np.ndarray | None


def predict(
    session: Session,
    data: Data,
    output: str | None = None,
    batch_size: int = 64,
    progress: ProgressFactory = silent,
) -> Predictions:
    output = output or default_output(session)
    if output not in session.output_names:
        raise DataError(f"model has no output {output!r}; outputs are {session.output_names}")
    per_step = _per_step(session).get(output, "")
    names = [output] + ([per_step] if per_step in session.output_names else [])
    predictions, step_predictions, labels = [], [], []
    for result, batch_labels in iter_labelled(session, data, batch_size, names, progress, "evaluating"):
        predictions.append(predicted_labels(result[output]))
        if batch_labels is not None:
            labels.append(batch_labels)
        if per_step in result:
            step_predictions.append(np.stack([predicted_labels(v) for v in result[per_step]]))
    return Predictions(
        output,
        np.concatenate(predictions),
        np.concatenate(step_predictions, axis=1) if step_predictions else None,
        np.concatenate(labels) if labels else None,
    )


def evaluate(
    session: Session,
    data: Data,
    output: str | None = None,
    batch_size: int = 64,
    progress: ProgressFactory = silent,
) -> Evaluation:
    p = predict(session, data, output, batch_size, progress)
    accuracy = steps = None
    if p.labels is not None:
        accuracy = float(np.mean(p.classes == p.labels))
        if p.steps is not None:
            steps = tuple(float(a) for a in (p.steps == p.labels[None, :]).mean(axis=1))
    return Evaluation(p.output, len(p.classes), p.classes, accuracy, steps)
