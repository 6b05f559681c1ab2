"""What every layout's emitter shares."""

from __future__ import annotations

from icsnn_onnx.passes.unroll.compensated import CompensatedSteps
from icsnn_onnx.passes.unroll.encoders import Encoders
from icsnn_onnx.passes.unroll.readout import ReadOut
from icsnn_onnx.passes.unroll.stateful import StatefulSteps


class Emitter(StatefulSteps, CompensatedSteps, Encoders, ReadOut):
    """Node creation, neuron and gate steps, compensated units, encoders, read-out and per-step
    outputs; a layout adds ``run``."""
