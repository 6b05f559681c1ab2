"""Neuron kinds: one module each, every one an equation table (:mod:`.kind`).

A kind's table generates its numpy reference and simulator, the ONNX function a converted file
carries, its NIR mapping where one exists and the report's cost of one neuron step; the compiler
emits its steps, the runtime finds them in any file, and the exporters read them, all through
:class:`NeuronKind` and this registry. Adding a kind is a module here, an entry in :data:`KINDS`
and the rule that recognizes the activations it replaces (docs/architecture.md walks through it).
"""

from __future__ import annotations

import onnx

from icsnn_onnx.contract import NEURON_DOMAIN
from icsnn_onnx.neurons.if_channelwise import IF_CHANNELWISE
from icsnn_onnx.neurons.if_neuron import IF
from icsnn_onnx.neurons.kind import OUT, NeuronKind, next_state

__all__ = [
    "IF",
    "IF_CHANNELWISE",
    "KINDS",
    "OUT",
    "NeuronKind",
    "by_name",
    "functions",
    "kind_of",
    "next_state",
]

#: Every neuron kind (and form) a file may hold, in the order their functions are written.
KINDS: tuple[NeuronKind, ...] = (IF, IF_CHANNELWISE)

_BY_OP_TYPE = {kind.op_type: kind for kind in KINDS}
_BY_NAME = {kind.name: kind for kind in KINDS}


def by_name(name: str) -> NeuronKind:
    """The kind called ``name`` (a ``KeyError`` for none: a bug, never a user's input)."""
    return _BY_NAME[name]


def kind_of(domain: str, op_type: str) -> NeuronKind | None:
    """The kind whose step a node of this domain and op type is, else ``None``."""
    return _BY_OP_TYPE.get(op_type) if domain == NEURON_DOMAIN else None


def functions(op_types: set[str], opset: int) -> list[onnx.FunctionProto]:
    """The ONNX functions of the kinds whose steps a graph uses (``op_types`` of its icsnn nodes)."""
    return [kind.function_proto(opset) for kind in KINDS if kind.op_type in op_types]
