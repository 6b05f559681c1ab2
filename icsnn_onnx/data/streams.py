"""Data read a part at a time: a directory or glob of ``.npz``/``.npy`` shards, or any iterable of
batches (arrays, dicts, ``(x, y)`` pairs: a torch ``DataLoader`` as it is).

Each part is validated as it is read, with the checks of :func:`.files.validated` (shape, dtype,
NaN/Inf, labels), and its errors name the shard or the batch and the row in it. Parts are cut
and joined into batches of the size asked for, so memory holds one part's batch, never the
dataset (an ``.npy`` shard is memory-mapped like a single ``.npy``).
"""

from __future__ import annotations

import glob
import logging
import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icsnn_onnx.data.dataset import Batch, Dataset
from icsnn_onnx.data.files import from_keys, read_file, single_input, validated
from icsnn_onnx.data.specs import InputSpec
from icsnn_onnx.errors import DataError, IcsnnError
from icsnn_onnx.limits import check_allocation

logger = logging.getLogger(__name__)

SHARD_SUFFIXES = (".npz", ".npy")
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Part:
    """One shard or one batch of an iterable, validated; ``where`` names it in errors."""

    data: Dataset
    where: str


class Stream:
    """A dataset read part by part (see the module's docstring), with the interface of
    :class:`.data.Dataset` that evaluation and calibration use: ``labelled_batches``,
    ``batches``, ``head`` and ``size`` (``None`` where the parts do not say how many samples
    they hold before they are read, as for a generator)."""

    def __init__(
        self,
        parts: Callable[[], Iterator[tuple[str, Mapping[str, np.ndarray], object]]],
        specs: list[InputSpec],
        *,
        size: int | None,
        once: bool,
        what: str,
        error: type[IcsnnError],
        shards: list[Path] | None = None,
    ) -> None:
        self._raw, self._specs, self.size = parts, specs, size
        self.shards = shards  # the files, where the parts are files (a distributed engine reads them)
        self._once, self._read, self._what, self._error = once, False, what, error

    def __repr__(self) -> str:
        return f"Stream({self._what!r}, size={self.size})"

    def parts(self) -> Iterator[Part]:
        """The validated parts in order; a one-shot iterable (a generator) reads only once."""
        if self._once and self._read:
            raise self._error(
                f"{self._what}: a one-shot iterator (e.g. a generator) is read once and was already; "
                "give a list, a DataLoader or shards, which can be read again"
            )
        self._read = True
        labelled: bool | None = None
        raw_parts = self._raw()
        while True:
            try:
                item = next(raw_parts, None)
            except DataError as err:  # a reader's error names its shard or batch
                raise self._error(f"{self._what}: {err}") from None
            if item is None:
                break
            where, raw, labels = item
            try:
                data = validated(raw, labels, self._specs)
            except DataError as err:
                raise self._error(f"{self._what}: {where}: {err}") from None
            if labelled is not None and labelled != (data.labels is not None):
                raise self._error(
                    f"{self._what}: {where} {'has' if data.labels is not None else 'has no'} labels 'y', "
                    f"the parts before it {'had' if labelled else 'had none'}: label every part or none"
                )
            labelled = data.labels is not None
            yield Part(data, where)
            item = raw = labels = data = None  # let the part go before the next one is read
        if labelled is None:
            raise self._error(f"{self._what}: no samples (no shards or batches)")

    def labelled_batches(self, size: int) -> Iterator[Batch]:
        """Batches of exactly ``size`` samples (the last one smaller), joined across parts."""
        pending: list[Batch] = []
        held = 0
        for part in self.parts():
            # A view of a part in memory (an .npz shard, a big batch) would keep the whole part
            # alive while the next is read, wherever a caller still holds a batch: copy.
            mapped = all(isinstance(v, np.memmap) for v in part.data.inputs.values())
            for piece in part.data.labelled_batches(size):
                pending.append(piece if mapped else _copy(piece))
                held += len(piece)
                while held >= size:
                    batch, pending = _split(pending, size)
                    held -= size
                    yield batch
            pending = [_copy(p) for p in pending] if mapped else pending  # (a view of the file's pages)
            part = piece = None  # (``piece`` is a view of the part's arrays)
        if held:
            yield _join(pending)

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for batch in self.labelled_batches(size):
            yield batch.inputs

    def reusable(self) -> Dataset | Stream:
        """What can be read more than once: the stream itself, or a one-shot iterable's samples
        read into memory (refused where they do not fit), for the users that read data twice."""
        if not self._once:
            return self
        logger.info("%s: a one-shot iterator, read into memory to be read more than once", self._what)
        return self.head(sys.maxsize)

    def head(self, n: int | None) -> Dataset | Stream:
        """The first ``n`` samples, in memory (all of them, ``None``: the stream itself)."""
        if n is None:
            return self
        pieces: list[Batch] = []
        held = 0
        for batch in self.labelled_batches(min(n, 4096)):  # (the last may be short)
            pieces.append(batch)
            held += len(batch)
            per_sample = sum(v[:1].nbytes for v in batch.inputs.values())
            check_allocation(
                per_sample * min(n, held), f"{self._what}: {held:,} samples in memory", self._error
            )
            if held >= n:
                break
        joined = _join(pieces)
        n = min(n, len(joined))
        return Dataset(
            {k: v[:n] for k, v in joined.inputs.items()}, None if joined.labels is None else joined.labels[:n]
        )


def _copy(batch: Batch) -> Batch:
    return Batch(
        {k: np.array(v) for k, v in batch.inputs.items()},
        None if batch.labels is None else np.array(batch.labels),
    )


def _join(pieces: list[Batch]) -> Batch:
    if len(pieces) == 1:
        return pieces[0]
    inputs = {k: np.concatenate([p.inputs[k] for p in pieces]) for k in pieces[0].inputs}
    labels = None if pieces[0].labels is None else np.concatenate([p.labels for p in pieces])  # type: ignore[misc]
    return Batch(inputs, labels)


def _split(pieces: list[Batch], size: int) -> tuple[Batch, list[Batch]]:
    """The first ``size`` samples of ``pieces`` as one batch, and what is left."""
    joined = _join(pieces)
    first = Batch(
        {k: v[:size] for k, v in joined.inputs.items()},
        None if joined.labels is None else joined.labels[:size],
    )
    rest = []
    if len(joined) > size:
        rest = [
            Batch(
                {k: v[size:] for k, v in joined.inputs.items()},
                None if joined.labels is None else joined.labels[size:],
            )
        ]
    return first, rest


# --- sources ---------------------------------------------------------------------------------


def open_stream(source: object, specs: list[InputSpec], what: str, error: type[IcsnnError]) -> Stream | None:
    """``source`` as a :class:`Stream` if it is shards or an iterable of batches, else ``None``."""
    if isinstance(source, Stream):
        return source
    if isinstance(source, str | Path):
        shards = find_shards(source)
        if shards is None:
            return None
        size = _rows(shards, specs)
        return Stream(
            lambda: _read_shards(shards, specs), specs, size=size, once=False, what=what, error=error
        )
    if isinstance(source, np.ndarray | Mapping | Dataset | bytes) or hasattr(source, "__array__"):
        return None
    if not isinstance(source, Iterable):
        return None
    once = iter(source) is source  # type: ignore[comparison-overlap]
    size = _known_size(source)
    return Stream(lambda: _read_batches(source, specs), specs, size=size, once=once, what=what, error=error)


def find_shards(source: str | Path) -> list[Path] | None:
    """The shard files a directory or glob names (sorted, numbers in names by value); ``None``
    for a path that is one file (or missing: the single-file reader reports it)."""
    path = Path(source)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.suffix in SHARD_SUFFIXES and p.is_file()]
        if not found:
            raise DataError(f"{path} is a directory without .npz or .npy shards")
    elif not path.exists() and _GLOB.search(str(source)):
        found = [Path(p) for p in glob.glob(str(source)) if Path(p).is_file()]
        if not found:
            raise DataError(f"no files match {source}")
        odd = [p.name for p in found if p.suffix not in SHARD_SUFFIXES]
        if odd:
            raise DataError(f"{source} matches files that are not .npz or .npy: {odd[:3]}")
    else:
        return None
    return sorted(found, key=_natural)


def _natural(path: Path) -> list[object]:
    """``part-2`` before ``part-10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _read_shards(
    shards: list[Path], specs: list[InputSpec]
) -> Iterator[tuple[str, Mapping[str, np.ndarray], object]]:
    for path in shards:
        try:
            raw, labels = read_file(path, specs)
        except DataError as err:
            raise DataError(f"shard {path}: {err}") from None
        yield f"shard {path}", raw, labels
        raw = labels = None  # not held while the next shard is read


def _rows(shards: list[Path], specs: list[InputSpec]) -> int | None:
    """Samples in all shards, from their headers alone (``None`` if one cannot say)."""
    total = 0
    for path in shards:
        rows = _header_rows(path, specs)
        if rows is None:
            return None
        total += rows
    return total


def _header_rows(path: Path, specs: list[InputSpec]) -> int | None:
    try:
        rows = npy_rows(path)
        if rows is not None:
            return rows
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            key = next((k for k in ("x", specs[0].name) if f"{k}.npy" in names), None) if specs else None
            if key is None:
                return None
            with archive.open(f"{key}.npy") as f:
                return _leading(f)
    except (OSError, ValueError, zipfile.BadZipFile, DataError):
        return None  # read (and reported) when the shard is opened


def npy_rows(path: Path) -> int | None:
    """The rows of an ``.npy`` file, from its header (``None`` if it is not one)."""
    with path.open("rb") as f:
        if f.read(6) != b"\x93NUMPY":
            return None
        f.seek(0)
        return _leading(f)


def _leading(f: object) -> int | None:
    version = np.lib.format.read_magic(f)  # type: ignore[arg-type]
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape = reader(f, max_header_size=2**20)[0]  # type: ignore[arg-type]
    return int(shape[0]) if shape else None


def _known_size(source: object) -> int | None:
    """Samples in an iterable that says so without being read: a DataLoader's dataset."""
    dataset = getattr(source, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None  # type: ignore[arg-type]
    except TypeError:
        return None


def _read_batches(
    source: Iterable[object], specs: list[InputSpec]
) -> Iterator[tuple[str, Mapping[str, np.ndarray], object]]:
    start = 0
    for index, item in enumerate(source):
        where = f"batch {index} (samples from {start})"
        try:
            raw, labels = _unpack(item, specs)
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
        yield where, raw, labels
        start += len(next(iter(raw.values()))) if raw else 0


def _unpack(item: object, specs: list[InputSpec]) -> tuple[dict[str, np.ndarray], object]:
    """A batch as inputs and labels: an array (one input), a dict keyed like an ``.npz``, or an
    ``(x, y)`` / ``[x, y]`` pair (a DataLoader yields lists) whose ``x`` is either of those."""
    labels = None
    if isinstance(item, tuple | list):
        if len(item) not in (1, 2):
            raise DataError(f"a batch is x, (x,) or (x, y), not a sequence of {len(item)}")
        item, labels = item[0], (item[1] if len(item) == 2 else None)
        labels = None if labels is None else np.asarray(labels)
    if isinstance(item, Mapping):
        inputs, found = from_keys({str(k): np.asarray(v) for k, v in item.items()}, specs, "a batch")
        return inputs, labels if labels is not None else found
    if isinstance(item, np.ndarray) or hasattr(item, "__array__"):
        return single_input(np.asarray(item), specs), labels
    raise DataError(f"a batch is an array, a dict or an (x, y) pair, not {type(item).__name__}")


Data = Dataset | Stream


def batch_count(data: Data, size: int) -> int:
    """Batches of ``size`` in ``data`` for a progress bar (0: not known before reading)."""
    return -(-data.size // size) if data.size is not None else 0
