"""A ready-to-run model on ONNX Runtime: numpy in and out, tuned session options.

Knows nothing of how a model was compiled; it runs any ONNX file as a user's own deployment
would. Provider choice is :mod:`.providers`, IO binding and CUDA graphs :mod:`.device`, batched
runs over a dataset :mod:`.batching`.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from icsnn_onnx.contract import SnnMetadata
from icsnn_onnx.data import Data, InputSpec, fixed_values, sample_specs
from icsnn_onnx.data.fixed import check_compiled_values
from icsnn_onnx.errors import ModelLoadError
from icsnn_onnx.model_io import load_model
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.runtime import batching
from icsnn_onnx.runtime.device import BoundRun, bind_on_device
from icsnn_onnx.runtime.providers import (
    CPU,
    CUDA,
    available_cores,
    log_provider_once,
    resolve_providers,
    target_mismatch,
)
from icsnn_onnx.runtime.types import numpy_type

logger = logging.getLogger(__name__)

Provider = str | tuple[str, dict[str, str]]

# What ONNX Runtime raises for a model it cannot load (a bad graph, an op it lacks), as opposed to
# a provider failing.
_ORT_LOAD_ERRORS = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented", "Fail")
    if hasattr(ort.capi.onnxruntime_pybind11_state, name)
)


def _first_line(err: Exception) -> str:
    """An exception's message for one log line (ONNX Runtime's run to many; some are empty)."""
    return (str(err).strip() or repr(err)).splitlines()[0]


def _metadata(model: str | bytes) -> dict[str, str]:
    """A model's ``metadata_props`` before ONNX Runtime loads it (external data not read); a
    missing or broken file is a :class:`ModelLoadError`."""
    proto = load_model(model, external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _session_options(threads: int | None, spin: bool, snn: SnnMetadata | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the optimizer's notes are not the user's business
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or available_cores()
    options.enable_mem_pattern = True
    if not spin:
        # Idle worker threads otherwise busy-wait after each run, stealing the cores from
        # another session in the same process (e.g. an ANN timed against its SNN).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if snn is not None and snn.target == "cpu":
        # Its steps all stay in the CPU provider's blocked layout; ordered by priority, ONNX
        # Runtime then runs them step by step and frees each step's tensors (peak memory far
        # lower at the same speed: benchmarks/results/throughput.json). The portable neurons fare
        # worse that way, so they keep the default order.
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return options


class Session:
    """A ready-to-run model. ``run`` takes and returns numpy arrays.

    Tuned for throughput: all graph optimizations, one intra-op thread per available core,
    memory-pattern planning. On CUDA, :meth:`runner` keeps inputs and outputs on the device (IO
    binding) and, with ``cuda_graph=True``, replays a captured CUDA graph; if capture is not
    possible the session falls back to plain CUDA execution and logs why. ``cuda_options`` go to
    ONNX Runtime's CUDA provider as they are (``device_id``, ``use_tf32``, …); ignored off CUDA.
    """

    def __init__(
        self,
        model: str | Path | bytes | onnx.ModelProto,
        provider: str = "auto",
        threads: int | None = None,
        cuda_graph: bool = False,
        spin: bool = True,
        cuda_options: Mapping[str, str] | None = None,
        fixed: Mapping[str, object] | None = None,
    ) -> None:
        if isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        elif isinstance(model, Path):
            model = str(model)
        # Read once, before ONNX Runtime loads the model: the execution order depends on it.
        self.metadata: dict[str, str] = _metadata(model)
        self.snn = SnnMetadata.read(self.metadata)  # None for a model icsnn-onnx did not write
        options = _session_options(threads, spin, self.snn)
        names = resolve_providers(provider)
        # e.g. {"device_id": "1"}, {"use_tf32": "0"}: ONNX Runtime's CUDA provider options.
        cuda_options = {k: str(v) for k, v in (cuda_options or {}).items()}
        providers: list[Provider] = [(CUDA, cuda_options) if n == CUDA else n for n in names]
        self.cuda_graph = False
        self._plain_session: Callable[[], ort.InferenceSession] | None = None
        self._graph_ids = itertools.count()  # one CUDA graph per bound runner (its shapes, buffers)
        if cuda_graph and names[0] == CUDA:
            self._try_cuda_graph(model, options, providers, cuda_options)
        elif cuda_graph:
            logger.info("CUDA graphs need the CUDA provider; running on %s without them", names[0])
        if not self.cuda_graph:
            self._session = self._load(model, options, providers)
        self.provider = self._session.get_providers()[0]
        log_provider_once(self.provider)
        every_input = [
            InputSpec(i.name, numpy_type(i.type, i.name), tuple(i.shape)) for i in self._session.get_inputs()
        ]
        # Inputs that are not samples, one value for every run: fed here, not asked of the data.
        self.fixed = fixed_values(fixed, every_input)
        check_compiled_values(self.metadata, self.fixed)
        self.inputs = sample_specs(every_input, self.fixed)
        self.output_names = [o.name for o in self._session.get_outputs()]
        mismatch = target_mismatch(self.snn, self.provider)
        if mismatch:
            logger.warning(mismatch)
        # Per-step outputs are [T, N, ...]: their batch axis is 1.
        self._batch_axis = {name: 1 for name in (self.snn.per_step.values() if self.snn else ())}

    @staticmethod
    def _load(
        model: str | bytes, options: ort.SessionOptions, providers: list[Provider]
    ) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(model, options, providers=providers)
        except _ORT_LOAD_ERRORS as err:
            where = "the given model" if isinstance(model, bytes) else model
            raise ModelLoadError(f"{where}: ONNX Runtime cannot load it: {_first_line(err)}") from err

    def _try_cuda_graph(
        self,
        model: str | bytes,
        options: ort.SessionOptions,
        providers: list[Provider],
        cuda_options: dict[str, str],
    ) -> None:
        try:
            graph_providers = [(CUDA, {**cuda_options, "enable_cuda_graph": "1"}), CPU]
            self._session = ort.InferenceSession(model, options, providers=graph_providers)
            self.cuda_graph = True
            # Capture happens at the first runs; if it fails there, run without the graph.
            self._plain_session = functools.partial(ort.InferenceSession, model, options, providers=providers)
        except Exception as err:  # e.g. nodes that must run on the CPU
            logger.warning("CUDA graph capture not possible (%s); running without it", _first_line(err))

    def batch_axis(self, output: str) -> int:
        return self._batch_axis.get(output, 0)

    def _drop_cuda_graph(self, err: Exception) -> ort.InferenceSession:
        """A bound runner's CUDA graph failed at capture or replay: the same model without
        graphs, from now on (built at the first failure, shared by every runner that fails)."""
        logger.warning(
            "CUDA graph capture failed (%s); running without it",
            _first_line(err),
        )
        if self._plain_session is not None:
            self._session, self._plain_session, self.cuda_graph = self._plain_session(), None, False
        return self._session

    def run(
        self, feeds: Mapping[str, np.ndarray] | np.ndarray, outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        if isinstance(feeds, np.ndarray):
            feeds = {self.inputs[0].name: feeds}
        if self.fixed:
            feeds = {**feeds, **self.fixed}
        names = outputs or self.output_names
        options = None
        if self.cuda_graph:
            # A graph replays fixed device addresses; plain runs copy feeds anew, so skip it.
            options = ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", "-1")
        return dict(zip(names, self._session.run(names, dict(feeds), options), strict=True))

    def runner(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """A zero-argument callable that runs the model on ``feeds`` again and again.

        On CUDA the inputs are copied to the device once and outputs stay there (IO binding), so
        repeated calls measure the model, not host transfers; with a CUDA graph the first call
        captures it and later calls replay it. On the CPU it is a plain ``run``.
        """
        if self.provider != CUDA:
            names, host_feeds = self.output_names, {**feeds, **self.fixed}

            def run_on_host() -> None:
                self._session.run(names, host_feeds)

            return run_on_host
        return self.bound_runner(feeds, "cuda")

    def output_shapes(self, feeds: Mapping[str, np.ndarray]) -> dict[str, list[int]] | None:
        """Every output's shape for these feeds, from the inputs' named (symbolic) dimensions;
        ``None`` if some output dimension is not determined by them."""
        sizes: dict[str, int] = {}
        feeds = {**feeds, **self.fixed}
        for spec in self._session.get_inputs():
            for dim, size in zip(spec.shape, np.shape(feeds[spec.name]), strict=True):
                if isinstance(dim, str):
                    sizes[dim] = size
        shapes = {}
        for spec in self._session.get_outputs():
            dims = [dim if isinstance(dim, int) else sizes.get(dim) for dim in spec.shape]
            if any(dim is None for dim in dims):
                return None
            shapes[spec.name] = dims
        return shapes

    def bound_runner(self, feeds: Mapping[str, np.ndarray], device: str) -> BoundRun:
        """:meth:`runner` with IO binding on ``device`` (:func:`.device.bind_on_device`): outputs
        pre-allocated at :meth:`output_shapes`; without known shapes the CUDA graph is skipped for
        these runs (logged) rather than replayed into buffers nobody reads."""
        shapes = self.output_shapes(feeds)
        if shapes is None and self.cuda_graph:
            logger.warning("output shapes unknown before the first run; CUDA graph not used")
        graph_id = "-1" if shapes is None else str(next(self._graph_ids))
        on_failure = self._drop_cuda_graph if self.cuda_graph else None
        return bind_on_device(
            self._session,
            {**feeds, **self.fixed},
            device,
            shapes,
            graph_id,
            lambda: self.cuda_graph,
            on_failure,
        )

    def iter_run(
        self,
        data: Data,
        batch_size: int = 64,
        outputs: list[str] | None = None,
        progress: ProgressFactory = silent,
        desc: str = "running",
    ) -> Iterator[dict[str, np.ndarray]]:
        """Run ``data`` in batches, yielding each batch's outputs (:func:`.batching.iter_run`)."""
        return batching.iter_run(self, data, batch_size, outputs, progress, desc)

    def run_all(
        self,
        data: Data,
        batch_size: int = 64,
        outputs: list[str] | None = None,
        progress: ProgressFactory = silent,
    ) -> dict[str, np.ndarray]:
        """Run ``data`` in batches and concatenate the outputs."""
        return batching.run_all(self, data, batch_size, outputs, progress)
