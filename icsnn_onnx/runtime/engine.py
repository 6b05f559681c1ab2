"""Distributed runs on Ray Data (``--engine ray``): evaluation, tuning and calibration statistics.

The data is cut into chunks — row ranges of ``.npy`` files and whole ``.npz`` shards, read by the
workers themselves (so on a cluster the files must be where every node can read them), or
batches already in memory, put in Ray's object store — and made a Ray dataset. ``map_batches``
sends each chunk to an actor (:class:`ChunkWorker`) that holds its ONNX Runtime sessions for its
whole life, runs the chunk batch by batch, and returns counts, sums or maxima: the results are
reduced so that the order chunks finish in does not matter and equal a single process's exactly.

Ray is optional (``pip install "icsnn-onnx[ray]"``); without it :func:`connect` says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from icsnn_onnx.data import Data, Dataset, InputSpec, Stream, npy_rows, read_file, validated
from icsnn_onnx.errors import DataError, IcsnnError, OptionError
from icsnn_onnx.quiet import native_stderr_to_log

logger = logging.getLogger(__name__)

RAY_EXTRA = 'pip install "icsnn-onnx[ray]"'
#: Rows of an ``.npy`` a chunk holds, in batches: fewer, larger chunks pay Ray's per-task cost less often.
CHUNK_BATCHES = 16


@dataclass(frozen=True)
class RayEngine:
    """Where and how wide to run: a cluster ``address`` (``None``: a Ray already initialized in
    this process, else a local one), ``workers`` actors (``None``: one per CPU Ray reports,
    or per ``gpus_per_worker`` of its GPUs), each with ``gpus_per_worker`` GPUs (0: CPU only)."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if not (
            isinstance(self.gpus_per_worker, int | float)
            and math.isfinite(self.gpus_per_worker)
            and self.gpus_per_worker >= 0
        ):
            raise ValueError(f"gpus_per_worker must be a number ≥ 0, got {self.gpus_per_worker!r}")

    @property
    def provider(self) -> str:
        """The provider each worker's sessions use: CUDA where the worker has a GPU."""
        return "cuda" if self.gpus_per_worker > 0 else "cpu"


def ray_module() -> Any:
    """Ray, with Ray Data; an :class:`OptionError` naming the extra where it is not installed."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise OptionError(f"--engine ray needs Ray Data: {RAY_EXTRA}") from None
    return ray


def connect(engine: RayEngine) -> Any:
    """Ray, initialized for ``engine`` (quietly: Ray's messages go to the log)."""
    ray = ray_module()
    if not ray.is_initialized():
        chatter = io.StringIO()
        with (
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
            native_stderr_to_log("ray"),
        ):
            try:
                ray.init(
                    address=engine.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise OptionError(
                    f"cannot reach Ray at {engine.address or 'a new local cluster'}: {err}"
                ) from None
        for line in chatter.getvalue().splitlines():
            logger.debug("ray: %s", line)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.raise_original_map_exception = True  # a worker's DataError, not Ray's wrapper of it
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # It logs a worker's error with its stack before raising it, which run() re-raises as itself.
    logging.getLogger("ray.data.exceptions").setLevel(logging.CRITICAL)
    return ray


def worker_count(engine: RayEngine, chunks: int) -> int:
    """The actors to start: as asked, else as many as the cluster's CPUs (or GPUs) allow. A GPU
    request the cluster cannot meet is refused here: Ray would wait for it forever."""
    resources = ray_module().cluster_resources()
    if engine.gpus_per_worker > 0:
        gpus = resources.get("GPU", 0)
        if gpus < engine.gpus_per_worker:
            raise OptionError(
                f"--gpus-per-worker {engine.gpus_per_worker:g}: the Ray cluster has {gpus:g} GPU(s)"
            )
        wide = int(gpus // engine.gpus_per_worker)
    else:
        wide = int(resources.get("CPU", 1))
    return max(1, min(engine.workers or wide, chunks))


# --- the data as chunks ------------------------------------------------------------------------


def plan(data: Data, batch_size: int) -> tuple[list[dict[str, object]], list[Any]]:
    """Ray dataset rows, one per chunk (``path``, ``start``, ``stop``, ``ref``), and the object
    references the in-memory chunks point at (``ref`` ≥ 0) — see the module docstring."""
    ray = ray_module()
    rows = batch_size * CHUNK_BATCHES
    chunks: list[dict[str, object]] = []
    refs: list[Any] = []
    files = _files(data)
    if files is not None:
        for path, length in files:
            if length is None:  # an .npz: read whole by one worker
                chunks.append({"path": str(path), "start": 0, "stop": -1, "ref": -1})
                continue
            for start in range(0, length, rows):
                chunks.append(
                    {"path": str(path), "start": start, "stop": min(start + rows, length), "ref": -1}
                )
        return chunks, refs
    for batch in data.labelled_batches(rows):  # validated as they are read
        refs.append(ray.put(Dataset(batch.inputs, batch.labels)))
        chunks.append({"path": "", "start": 0, "stop": len(batch), "ref": len(refs) - 1})
    return chunks, refs


def _files(data: Data) -> list[tuple[Path, int | None]] | None:
    """The files the workers can read themselves, with the rows of each ``.npy`` (``None`` for an
    ``.npz``); ``None`` where the data is not (only) files."""
    if isinstance(data, Stream) and data.shards is not None:
        return [(path, npy_rows(path)) for path in data.shards]
    if isinstance(data, Dataset) and data.labels is None and len(data.inputs) == 1:
        (array,) = data.inputs.values()
        if (
            isinstance(array, np.memmap)
            and array.filename
            and len(array) == len(np.load(array.filename, mmap_mode="r"))
        ):
            return [(Path(array.filename), len(array))]
    return None


class ChunkWorker:
    """A Ray Data actor: reads each chunk it is given (validated, errors naming the file and its
    rows), hands it to :meth:`chunk`, and returns one row of results per chunk. Subclasses take
    their own arguments in :meth:`setup`."""

    def __init__(self, payload: list[Any]) -> None:
        import ray

        # The arguments (models as bytes) are put in the object store once for every actor; inside
        # a list, Ray hands the reference over as it is, and each actor fetches it here.
        arguments = dict(ray.get(payload[0]))
        self.specs: list[InputSpec] = arguments.pop("specs")
        self.refs: list[Any] = arguments.pop("refs")
        self.batch_size: int = arguments.pop("batch_size")
        self.what: str = arguments.pop("what")
        self.setup(**arguments)

    def setup(self, **arguments: Any) -> None:
        """The subclass's own state (sessions), from the arguments given to :func:`run`."""

    def __call__(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [
            self.chunk(self.read(str(path), int(start), int(stop), int(ref)))
            for path, start, stop, ref in zip(
                rows["path"], rows["start"], rows["stop"], rows["ref"], strict=True
            )
        ]
        return {key: np.stack([r[key] for r in results]) for key in results[0]}

    def read(self, path: str, start: int, stop: int, ref: int) -> Dataset:
        if ref >= 0:
            import ray

            return ray.get(self.refs[ref])
        where = f"shard {path}" if stop < 0 else f"{path}, rows {start}…{stop - 1}"
        try:
            raw, labels = read_file(Path(path), self.specs)
            if stop >= 0:
                raw = {k: v[start:stop] for k, v in raw.items()}
                labels = None if labels is None else np.asarray(labels)[start:stop]
            return validated(raw, labels, self.specs)
        except DataError as err:
            raise DataError(f"{self.what}: {where}: {err}") from None

    def chunk(self, data: Dataset) -> dict[str, np.ndarray]:
        raise NotImplementedError


def run(
    engine: RayEngine,
    data: Data,
    worker: type[ChunkWorker],
    arguments: Mapping[str, object],
    *,
    batch_size: int,
    what: str,
) -> Iterator[dict[str, np.ndarray]]:
    """Each chunk's results, in whatever order they finish, from ``worker`` actors (set up with
    ``arguments`` and ``specs``, the model's inputs)."""
    ray = connect(engine)
    chunks, refs = plan(data, batch_size)
    if not chunks:
        raise DataError(f"{what}: no samples")
    width = worker_count(engine, len(chunks))
    logger.info("%d chunk(s) on %d Ray worker(s)", len(chunks), width)
    payload = ray.put({**arguments, "refs": refs, "batch_size": batch_size, "what": what})
    results = ray.data.from_items(chunks).map_batches(
        worker,
        fn_constructor_args=([payload],),
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=width),
        num_cpus=1,
        num_gpus=engine.gpus_per_worker or None,
    )
    with ray_errors():
        yield from results.iter_rows()


@contextlib.contextmanager
def ray_errors() -> Iterator[None]:
    """Around a blocking Ray call: an icsnn-onnx error a worker raised comes back as itself (Ray
    wraps it), and Ray's C++ core's stderr (warnings about its actors' restarts) goes to the log
    (the caller prints nothing while inside)."""
    try:
        with native_stderr_to_log("ray"):
            yield
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        raise type(cause)(str(cause)) from None


def user_error(err: BaseException) -> IcsnnError | None:
    """The icsnn-onnx error a Ray task or actor raised, inside what Ray wraps it in (else ``None``)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, IcsnnError) and type(e).__module__.startswith("icsnn_onnx"):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def threads_per_worker() -> int:
    """ONNX Runtime threads in a worker: the one CPU Ray gives it (more would oversubscribe)."""
    return max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
