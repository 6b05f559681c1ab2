"""IO binding on a device: inputs copied there once, outputs pre-allocated there, and CUDA graphs
captured and replayed — with a fallback to plain runs when capture fails."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from icsnn_onnx.runtime.types import numpy_type

if TYPE_CHECKING:
    from icsnn_onnx.runtime.session import Session

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


def bind_on_device(session: Session, feeds: Mapping[str, np.ndarray], device: str) -> BoundRun:
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
    shapes = session.output_shapes(feeds)
    if shapes is None and session.cuda_graph:
        logger.warning("output shapes unknown before the first run; CUDA graph not used")
    graph_id = "-1" if shapes is None else str(next(session._graph_ids))
    types = {o.name: np.dtype(numpy_type(o.type, o.name)) for o in session._session.get_outputs()}
    outputs = (
        {}
        if shapes is None
        else {
            name: ort.OrtValue.ortvalue_from_shape_and_type(shapes[name], types[name], device, 0)
            for name in session.output_names
        }
    )

    def bind(ort_session: ort.InferenceSession) -> tuple[ort.IOBinding, ort.RunOptions]:
        binding, run_options = ort_session.io_binding(), ort.RunOptions()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name in session.output_names:
            if name in outputs:
                binding.bind_ortvalue_output(name, outputs[name])
            else:
                binding.bind_output(name, device, 0)
        if session.cuda_graph:  # read at each binding: False once a failed capture fell back
            run_options.add_run_config_entry("gpu_graph_id", graph_id)
        return binding, run_options

    on_failure = session._drop_cuda_graph if session.cuda_graph else None
    buffers = [*inputs.values(), *outputs.values()]
    return BoundRun(session._session, bind, session.output_names, buffers, on_failure)
