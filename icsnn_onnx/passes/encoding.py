"""Input encoding (``--encoding rate|poisson``): the graph inputs become spike trains.

Under direct coding (the default) the analog input is the input current at every step and
nothing here runs. Under rate or Poisson coding every float graph input ``x`` is normalized
with the range seen on calibration data, ``c = (x − low)/(high − low)``, and encoded:

- ``rate``: an IF encoder neuron (θ = 1, the one definition in :mod:`icsnn_onnx.neurons.if_neuron`) fed
  ``c`` at every step. Its spike count is ``floor(c·T + v(0))``: with coding compensation
  (Alg 3) ``v(0) = 1/2`` and the count rounds ``c·T``, without it ``v(0) = 0`` and it floors.
- ``poisson``: ``s(t) = [u(t) < c]`` with ``u(t)`` uniform noise fixed at compile time from the
  seed (one value per step and input element, shared by all samples of a batch), so a run is
  reproducible and an image's result does not depend on its batch.

The network receives ``low + (high − low)·s(t)``. The unroll pass emits the encoders; this
pass only measures the ranges and records one :class:`~icsnn_onnx.program.InputEncoder` per
input.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.contract import encoder_key
from icsnn_onnx.data import Data
from icsnn_onnx.errors import CalibrationError
from icsnn_onnx.passes import Pass, PassResult
from icsnn_onnx.passes.program import EncodingKind, InputEncoder, Program

logger = logging.getLogger(__name__)


def encoded_inputs(graph: gs.Graph, encoding: str) -> frozenset[str]:
    """The graph inputs that become spike trains under ``encoding`` (none for direct coding)."""
    if encoding == "direct":
        return frozenset()
    return frozenset(t.name for t in graph.inputs if t.dtype is not None and np.dtype(t.dtype).kind == "f")


class EncodeInputs(Pass):
    def __init__(self, calib: Data | None) -> None:
        self.calib = calib

    def call(self, program: Program) -> PassResult:
        options = program.options
        names = encoded_inputs(program.graph, options.encoding)
        if not names:
            return PassResult(program, False)
        if self.calib is None:
            raise CalibrationError(
                f"--encoding {options.encoding} needs calibration data (--calib) for the input range"
            )
        data = self.calib.head(options.calib_samples)
        v_init = 0.5 if options.compensation else 0.0
        ranges = {name: (np.inf, -np.inf) for name in names}
        for batch in data.batches(options.batch_size):  # a batch at a time: data may be streamed
            for name in names:
                low, high = ranges[name]
                ranges[name] = (min(low, float(np.min(batch[name]))), max(high, float(np.max(batch[name]))))
        for name in sorted(names):
            low, high = ranges[name]
            if not high > low:
                logger.warning("input %s is constant (%g) on calibration data; range widened by 1", name, low)
                high = low + 1.0
            encoder = InputEncoder(name, EncodingKind(options.encoding), low, high, v_init, options.seed)
            program.encoders[name] = encoder
            program.metadata[encoder_key(name)] = encoder.describe()
        return PassResult(program, True)
