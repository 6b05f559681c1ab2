"""ONNX Runtime session wrapper: quiet provider choice, numpy in/out, batched runs.

Knows nothing of how a model was compiled; it runs any ONNX file as a user's own deployment
would. The CUDA provider is chosen only when it actually works (probed once, quietly: with
onnxruntime-gpu but no CUDA libraries, asking for CUDA logs an error we do not want to show).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from icsnn_onnx.contract import TARGET_KEY, SnnMetadata, per_step_outputs
from icsnn_onnx.data import Dataset, InputSpec
from icsnn_onnx.errors import DataError, ModelLoadError, ProviderUnavailableError
from icsnn_onnx.limits import check_allocation
from icsnn_onnx.model_io import load_model
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.quiet import ORT_SILENT, ort_log_severity

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PROVIDERS = {"cpu": CPU, "cuda": CUDA}


def _probe_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    return model.SerializeToString()


@functools.cache
def cuda_available() -> bool:
    """Whether the CUDA provider really runs here (probed once, without logging errors)."""
    if CUDA not in ort.get_available_providers():
        return False
    with ort_log_severity(ORT_SILENT):
        if importlib.util.find_spec("nvidia") is not None and hasattr(ort, "preload_dlls"):
            with contextlib.suppress(Exception):
                ort.preload_dlls()  # CUDA/cuDNN from NVIDIA's pip wheels ([cuda] extra)
        try:
            options = ort.SessionOptions()
            options.log_severity_level = ORT_SILENT
            session = ort.InferenceSession(_probe_model(), options, providers=[CUDA])
            return session.get_providers()[0] == CUDA
        except Exception:
            return False


def resolve_providers(provider: str = "auto") -> list[str]:
    """``auto`` → CUDA if it works, else CPU; ``cpu``/``cuda`` → that one (CUDA must work)."""
    if provider == "auto":
        return [CUDA, CPU] if cuda_available() else [CPU]
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be auto, cpu or cuda, got {provider!r}")
    if provider == "cuda" and not cuda_available():
        raise ProviderUnavailableError(
            "the CUDA provider is not usable here (no GPU, or CUDA libraries missing: "
            "install icsnn-onnx[cuda])"
        )
    return [PROVIDERS[provider], CPU] if provider == "cuda" else [CPU]


@functools.cache
def _log_provider_once(provider: str) -> None:
    logger.info("ONNX Runtime runs on %s", provider)


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def target_mismatch(metadata: Mapping[str, str], provider: str) -> str | None:
    """Why a model compiled with ``--target cpu`` should not run on ``provider`` (None if fine):
    its neurons are 1×1 convolutions whose spikes are exact only in float32 arithmetic, and a
    GPU's convolutions may run in TF32."""
    if metadata.get(TARGET_KEY) == "cpu" and provider != CPU:
        return (
            f"this SNN was compiled with --target cpu but runs on {provider}, whose convolutions may "
            "round to TF32 and change spikes; compile with --target portable for GPUs"
        )
    return None


def _metadata(model: str | bytes | onnx.ModelProto) -> dict[str, str]:
    """A model's ``metadata_props`` before ONNX Runtime loads it (external data not read); a
    missing or broken file is a :class:`ModelLoadError`."""
    proto = load_model(model, external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


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


class BoundRun:
    """One IO-bound run, repeatable: ``run()`` executes, ``run.outputs()`` copies the results to
    the host. It owns the device buffers, which must outlive every replay.

    ``on_failure`` (given while a CUDA graph is to be captured) is asked once, when a run fails,
    for a session without the graph; the run is then bound to it and repeated."""

    def __init__(
        self,
        session: ort.InferenceSession,
        bind: Callable[[ort.InferenceSession], tuple[ort.IOBinding, ort.RunOptions]],
        output_names: list[str],
        buffers: list[ort.OrtValue],
        on_failure: Callable[[Exception], ort.InferenceSession] | None = None,
    ) -> None:
        self._session, self._bind, self._on_failure = session, bind, on_failure
        self._binding, self._options = bind(session)
        self._output_names, self._buffers = output_names, buffers

    def __call__(self) -> None:
        try:
            self._session.run_with_iobinding(self._binding, self._options)
        except Exception as err:
            if self._on_failure is None:
                raise
            self._session, self._on_failure = self._on_failure(err), None
            self._binding, self._options = self._bind(self._session)
            self._session.run_with_iobinding(self._binding, self._options)
        self._binding.synchronize_outputs()

    def outputs(self) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self._binding.copy_outputs_to_cpu(), strict=True))


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
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or available_cores()
        options.enable_mem_pattern = True
        if not spin:
            # Idle worker threads otherwise busy-wait after each run, stealing the cores from
            # another session in the same process (e.g. an ANN timed against its SNN).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        elif isinstance(model, Path):
            model = str(model)
        # Read once, before ONNX Runtime loads the model: the execution order depends on it.
        self.metadata: dict[str, str] = _metadata(model)
        self.snn = SnnMetadata.read(self.metadata)  # None for a model icsnn-onnx did not write
        if self.metadata.get(TARGET_KEY) == "cpu":
            # Its steps all stay in the CPU provider's blocked layout; ordered by priority, ONNX
            # Runtime then runs them step by step and frees each step's tensors (VGG-11, T=32,
            # batch 64: peak RSS 1.3 GiB → 0.4 GiB, ResNet-18 2.4 → 1.0 GiB, same speed). The
            # portable neurons fare worse that way (ResNet-18 1.2 → 2.6 GiB), so they keep the
            # default order.
            options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        names = resolve_providers(provider)
        on_cuda = names[0] == CUDA
        # e.g. {"device_id": "1"}, {"use_tf32": "0"}: ONNX Runtime's CUDA provider options.
        cuda_options = {k: str(v) for k, v in (cuda_options or {}).items()}
        providers: list[str | tuple[str, dict[str, str]]] = list(names)
        if on_cuda:
            providers[0] = (CUDA, cuda_options)
        self.cuda_graph = False
        self._plain_session: Callable[[], ort.InferenceSession] | None = None
        self._graph_ids = itertools.count()  # one CUDA graph per bound runner (its shapes, buffers)
        if cuda_graph and on_cuda:
            try:
                graph_providers = [(CUDA, {**cuda_options, "enable_cuda_graph": "1"}), CPU]
                self._session = ort.InferenceSession(model, options, providers=graph_providers)
                self.cuda_graph = True
                # Capture happens at the first runs; if it fails there, run without the graph.
                self._plain_session = functools.partial(
                    ort.InferenceSession, model, options, providers=providers
                )
            except Exception as err:  # e.g. nodes that must run on the CPU
                logger.warning("CUDA graph capture not possible (%s); running without it", _first_line(err))
        elif cuda_graph:
            logger.info("CUDA graphs need the CUDA provider; running on %s without them", names[0])
        if not self.cuda_graph:
            try:
                self._session = ort.InferenceSession(model, options, providers=providers)
            except _ORT_LOAD_ERRORS as err:
                where = "the given model" if isinstance(model, bytes) else model
                raise ModelLoadError(f"{where}: ONNX Runtime cannot load it: {_first_line(err)}") from err
        self.provider = self._session.get_providers()[0]
        _log_provider_once(self.provider)
        self.inputs = [
            InputSpec(i.name, np.dtype(_ORT_TYPES.get(i.type, np.float32)), tuple(i.shape))
            for i in self._session.get_inputs()
        ]
        self.output_names = [o.name for o in self._session.get_outputs()]
        mismatch = target_mismatch(self.metadata, self.provider)
        if mismatch:
            logger.warning(mismatch)
        # Per-step outputs are [T, N, ...]: their batch axis is 1.
        self._batch_axis = {name: 1 for name in per_step_outputs(self.metadata).values()}

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
            names, host_feeds = self.output_names, dict(feeds)

            def run_on_host() -> None:
                self._session.run(names, host_feeds)

            return run_on_host
        return self.bound_runner(feeds, "cuda")

    def output_shapes(self, feeds: Mapping[str, np.ndarray]) -> dict[str, list[int]] | None:
        """Every output's shape for these feeds, from the inputs' named (symbolic) dimensions;
        ``None`` if some output dimension is not determined by them."""
        sizes: dict[str, int] = {}
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
        """:meth:`runner` with IO binding on ``device``: inputs copied there once, outputs
        pre-allocated there at :meth:`output_shapes`, so every run reads and writes the same
        buffers. A CUDA graph replays exactly those addresses and shapes: each bound runner
        captures a graph of its own (``gpu_graph_id``), so runners of other batch sizes on the
        same session stay correct; without known output shapes the graph is skipped for these runs
        (logged) rather than replayed into buffers nobody reads."""
        inputs = {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0)
            for name, value in feeds.items()
        }
        shapes = self.output_shapes(feeds)
        if shapes is None and self.cuda_graph:
            logger.warning("output shapes unknown before the first run; CUDA graph not used")
        graph_id = "-1" if shapes is None else str(next(self._graph_ids))
        types = {o.name: np.dtype(_ORT_TYPES.get(o.type, np.float32)) for o in self._session.get_outputs()}
        outputs = (
            {}
            if shapes is None
            else {
                name: ort.OrtValue.ortvalue_from_shape_and_type(shapes[name], types[name], device, 0)
                for name in self.output_names
            }
        )

        def bind(session: ort.InferenceSession) -> tuple[ort.IOBinding, ort.RunOptions]:
            binding, run_options = session.io_binding(), ort.RunOptions()
            for name, value in inputs.items():
                binding.bind_ortvalue_input(name, value)
            for name in self.output_names:
                if name in outputs:
                    binding.bind_ortvalue_output(name, outputs[name])
                else:
                    binding.bind_output(name, device, 0)
            if self.cuda_graph:  # read at each binding: False once a failed capture fell back
                run_options.add_run_config_entry("gpu_graph_id", graph_id)
            return binding, run_options

        on_failure = self._drop_cuda_graph if self.cuda_graph else None
        buffers = [*inputs.values(), *outputs.values()]
        return BoundRun(self._session, bind, self.output_names, buffers, on_failure)

    def iter_run(
        self,
        data: Dataset,
        batch_size: int = 64,
        outputs: list[str] | None = None,
        progress: ProgressFactory = silent,
        desc: str = "running",
    ) -> Iterator[dict[str, np.ndarray]]:
        """Run ``data`` in batches, yielding each batch's outputs (memory stays bounded).

        A model with a static batch size gets batches of exactly that size; the last one is
        padded and the padding removed from the outputs.
        """
        static = self.inputs[0].static_batch if self.inputs else None
        size = static or batch_size
        if static and len(data):
            per_sample = sum(v[:1].nbytes for v in data.inputs.values())
            check_allocation(per_sample * static, f"a batch of the model's static size {static}", DataError)
        bar = progress(-(-len(data) // size), desc)
        try:
            for batch in data.batches(size):
                n = len(next(iter(batch.values())))
                if static and n < static:
                    batch = {
                        k: np.concatenate([v, np.repeat(v[-1:], static - n, 0)]) for k, v in batch.items()
                    }
                result = self.run(batch, outputs)
                if static and n < static:
                    result = {k: np.take(v, range(n), axis=self.batch_axis(k)) for k, v in result.items()}
                yield result
                bar.update(1)
        finally:
            bar.close()

    def run_all(
        self,
        data: Dataset,
        batch_size: int = 64,
        outputs: list[str] | None = None,
        progress: ProgressFactory = silent,
    ) -> dict[str, np.ndarray]:
        """Run ``data`` in batches and concatenate the outputs."""
        parts: dict[str, list[np.ndarray]] = {}
        for result in self.iter_run(data, batch_size, outputs, progress):
            for k, v in result.items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v, axis=self.batch_axis(k)) for k, v in parts.items()}
