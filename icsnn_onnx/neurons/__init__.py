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
from icsnn_onnx.neurons import graded as _graded
from icsnn_onnx.neurons import sigma_delta as _sigma_delta
from icsnn_onnx.neurons.function import ElementwiseFunction
from icsnn_onnx.neurons.graded import MAX_LEVELS, graded_if, levels_of
from icsnn_onnx.neurons.if_channelwise import IF_CHANNELWISE
from icsnn_onnx.neurons.if_neuron import IF
from icsnn_onnx.neurons.kind import OUT, NeuronKind, count_breakpoint, driven, next_state

__all__ = [
    "IF",
    "IF_CHANNELWISE",
    "KINDS",
    "MAX_LEVELS",
    "OUT",
    "ElementwiseFunction",
    "NeuronKind",
    "by_name",
    "count_breakpoint",
    "driven",
    "functions",
    "graded_if",
    "kind_of",
    "levels_of",
    "next_state",
    "sigma_delta",
]

sigma_delta = _sigma_delta.sigma_delta

#: The fixed kinds (and forms), in the order their functions are written; the sigma-delta kinds,
#: one per activation function (:func:`sigma_delta`), and the graded IF kinds, one per K
#: (:func:`graded_if`), follow them.
KINDS: tuple[NeuronKind, ...] = (IF, IF_CHANNELWISE)

_BY_OP_TYPE = {kind.op_type: kind for kind in KINDS}
_BY_NAME = {kind.name: kind for kind in KINDS}


def by_name(name: str) -> NeuronKind:
    """The fixed kind called ``name``, or a sigma-delta kind by its op type (a ``KeyError`` for
    none: a bug, never a user's input)."""
    kind = _BY_NAME.get(name) or _sigma_delta.lookup(name) or _graded.lookup(name)
    if kind is None:
        raise KeyError(name)
    return kind


def kind_of(domain: str, op_type: str) -> NeuronKind | None:
    """The kind whose step a node of this domain and op type is, else ``None`` (a sigma-delta kind
    written by another process: its shared signature)."""
    if domain != NEURON_DOMAIN:
        return None
    return _BY_OP_TYPE.get(op_type) or _sigma_delta.lookup(op_type) or _graded.lookup(op_type)


def functions(op_types: set[str], opset: int) -> list[onnx.FunctionProto]:
    """The ONNX functions of the kinds whose steps a graph uses (``op_types`` of its icsnn nodes):
    the fixed kinds in :data:`KINDS` order, then the sigma-delta and graded kinds by name."""
    fixed = [kind.function_proto(opset) for kind in KINDS if kind.op_type in op_types]
    parametric = sorted(t for t in op_types if t not in _BY_OP_TYPE and kind_of(NEURON_DOMAIN, t))
    return fixed + [kind_of(NEURON_DOMAIN, t).function_proto(opset) for t in parametric]
