"""IO binding on a device: inputs copied there once, outputs pre-allocated there, and CUDA graphs
captured and replayed — with a fallback to plain runs when capture fails."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import onnxruntime as ort

from icsnn_onnx.runtime.types import numpy_type

logger = logging.getLogger(__name__)


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


def bind_on_device(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    device: str,
    shapes: Mapping[str, list[int]] | None,
    graph_id: str,
    cuda_graph: Callable[[], bool],
    on_failure: Callable[[Exception], ort.InferenceSession] | None,
) -> BoundRun:
    """A :class:`BoundRun` of ``session`` with IO binding on ``device``: inputs copied there once,
    outputs pre-allocated there at ``shapes`` (every output's, or ``None`` when not known before a
    run: ONNX Runtime allocates them), so every run reads and writes the same buffers. A CUDA graph
    replays exactly those addresses and shapes, so each bound run has a graph of its own
    (``graph_id``, ``"-1"`` for none); ``cuda_graph()`` says, at each binding, whether graphs are
    still in use (not once a failed capture fell back to ``on_failure``'s session)."""
    inputs = {
        name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0)
        for name, value in feeds.items()
    }
    output_names = [o.name for o in session.get_outputs()]
    types = {o.name: np.dtype(numpy_type(o.type, o.name)) for o in session.get_outputs()}
    outputs = (
        {}
        if shapes is None
        else {
            name: ort.OrtValue.ortvalue_from_shape_and_type(shapes[name], types[name], device, 0)
            for name in output_names
        }
    )

    def bind(ort_session: ort.InferenceSession) -> tuple[ort.IOBinding, ort.RunOptions]:
        binding, run_options = ort_session.io_binding(), ort.RunOptions()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name in output_names:
            if name in outputs:
                binding.bind_ortvalue_output(name, outputs[name])
            else:
                binding.bind_output(name, device, 0)
        if cuda_graph():
            run_options.add_run_config_entry("gpu_graph_id", graph_id)
        return binding, run_options

    buffers = [*inputs.values(), *outputs.values()]
    return BoundRun(session, bind, output_names, buffers, on_failure)
