"""Data for calibration and evaluation, read and validated against a model's inputs.

Accepted forms: an ``.npz`` with ``x`` (single-input models) or keys named after the model's
inputs, and optional integer labels ``y``; an ``.npy`` of inputs, memory-mapped (read batch by
batch as it is used, so it may be larger than memory); the same in memory (an array, a dict of
arrays, a :class:`Dataset`); a directory or glob of such shards, or any iterable of batches (a
torch ``DataLoader``), read a part at a time (:class:`Stream`).

One direction of use inside: ``specs`` ← ``dataset`` ← ``files`` ← ``streams`` ← this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from icsnn_onnx.data.dataset import Batch, Dataset, release
from icsnn_onnx.data.files import from_keys, read, read_file, single_input, validated
from icsnn_onnx.data.fixed import Fixed, fixed_values, sample_specs
from icsnn_onnx.data.specs import InputSpec, check_same_inputs, input_specs
from icsnn_onnx.data.streams import Data, Stream, batch_count, find_shards, npy_rows, open_stream
from icsnn_onnx.errors import DataError, IcsnnError

__all__ = [
    "Batch",
    "Data",
    "DataSource",
    "Dataset",
    "Fixed",
    "InputSpec",
    "Stream",
    "batch_count",
    "check_same_inputs",
    "find_shards",
    "fixed_values",
    "from_keys",
    "input_specs",
    "load_dataset",
    "npy_rows",
    "read_file",
    "release",
    "sample_specs",
    "single_input",
    "validated",
]

DataSource = str | Path | np.ndarray | Mapping[str, np.ndarray] | Dataset | Iterable[object]


def load_dataset(
    source: DataSource,
    specs: list[InputSpec],
    *,
    what: str = "data",
    error: type[IcsnnError] = DataError,
) -> Dataset | Stream:
    """Read and validate ``source`` for a model with inputs ``specs``; raises ``error``.

    A directory or glob of shards, or an iterable of batches, becomes a :class:`Stream`: read
    and validated one part at a time as it is used (its errors name the shard or batch)."""
    try:
        stream = open_stream(source, specs, what, error)
        if stream is not None:
            return stream
        raw, labels = read(source, specs)
        return validated(raw, labels, specs)
    except DataError as err:
        raise error(f"{what}: {err}") from None
