"""Datasets through a session in batches: memory bounded by the batch; a model with a static
batch size gets batches of exactly that size (the last one padded, the padding dropped)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np

from icsnn_onnx.data import Data, InputSpec, batch_count
from icsnn_onnx.errors import DataError
from icsnn_onnx.limits import check_allocation
from icsnn_onnx.progress import ProgressFactory, silent


class Runs(Protocol):
    """What batching needs of a session (:class:`~icsnn_onnx.runtime.session.Session` has it)."""

    inputs: Sequence[InputSpec]

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]: ...

    def batch_axis(self, output: str) -> int: ...


def iter_run(
    session: Runs,
    data: Data,
    batch_size: int = 64,
    outputs: list[str] | None = None,
    progress: ProgressFactory = silent,
    desc: str = "running",
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``data`` in batches, yielding each batch's outputs (memory stays bounded)."""
    for result, _ in iter_labelled(session, data, batch_size, outputs, progress, desc):
        yield result


def iter_labelled(
    session: Runs,
    data: Data,
    batch_size: int = 64,
    outputs: list[str] | None = None,
    progress: ProgressFactory = silent,
    desc: str = "running",
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """Run ``data`` in batches, yielding each batch's outputs and labels (``None`` without).

    A model with a static batch size gets batches of exactly that size; the last one is
    padded and the padding removed from the outputs.
    """
    static = session.inputs[0].static_batch if session.inputs else None
    size = static or batch_size
    bar = progress(batch_count(data, size), desc)
    try:
        for index, batch in enumerate(data.labelled_batches(size)):
            feeds, n = batch.inputs, len(batch)
            if static and index == 0:
                per_sample = sum(v[:1].nbytes for v in feeds.values())
                check_allocation(
                    per_sample * static, f"a batch of the model's static size {static}", DataError
                )
            if static and n < static:
                feeds = {k: np.concatenate([v, np.repeat(v[-1:], static - n, 0)]) for k, v in feeds.items()}
            result = session.run(feeds, outputs)
            if static and n < static:
                result = {k: np.take(v, range(n), axis=session.batch_axis(k)) for k, v in result.items()}
            yield result, batch.labels
            bar.update(1)
    finally:
        bar.close()


def run_all(
    session: Runs,
    data: Data,
    batch_size: int = 64,
    outputs: list[str] | None = None,
    progress: ProgressFactory = silent,
) -> dict[str, np.ndarray]:
    """Run ``data`` in batches and concatenate the outputs."""
    parts: dict[str, list[np.ndarray]] = {}
    for result in iter_run(session, data, batch_size, outputs, progress):
        for k, v in result.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v, axis=session.batch_axis(k)) for k, v in parts.items()}
