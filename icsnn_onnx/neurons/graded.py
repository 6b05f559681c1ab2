"""Graded spikes (``--levels K``): a neuron that fires up to K units of θ per step.

The IF neuron's quantizer with a multi-level fire and reset by subtraction of what it emitted.
Per step t = 1..T, with current (or, in the sigma-delta neuron, drive) z(t)::

    m(t)   = v(t-1) + z(t)                     (integrate)
    s(t)   = clip(⌊m(t)/θ⌋, lo, hi)            (fire: 0 … K units; −K … K where signed)
    v(t)   = m(t) − θ·s(t)                     (reset by subtraction)
    out(t) = θ·s(t)

``lo, hi`` = ``0, K`` (:func:`graded_if`, the neuron of ReLU-family sites) or ``−K, K``
(:func:`graded_signed`, the quantizer of the graded sigma-delta neuron). The IF identity
``θ·Σs/T = Σz/T − (v(T) − v(0))/T`` holds unchanged (the reset takes what was emitted), and while
the membrane stays in ``[0, θ)`` an input up to Kθ per step is passed on with no lag: K = 1 is the
binary neuron. With ``K = L`` and T = 1 a graded IF neuron from ``v(0) = φ·θ``, ``θ = λ/L``, *is*
the L-level quantizer ``(λ/L)·clip(⌊x·L/λ + φ⌋, 0, L)`` of a quantized ANN (docs/method.md §16).

:data:`GRADED_BREAKPOINT` is Alg 2's one-run analysis of the same neuron (derived in §16): a
start δ ∈ [0, θ) is, against the run from 0, level (δ above) or one unit ahead (θ − δ below);
with ``n = ⌊m/θ⌋`` of the run from 0 and ``g = θ − (m − nθ)``, a step with ``n < lo`` or ``n > hi``
changes nothing, ``n = lo`` lets starts from ``g`` go ahead, ``lo < n < hi`` makes exactly the
starts from ``g`` ahead, ``n = hi`` keeps ahead only those from ``g``.
"""

from __future__ import annotations

import numpy as np

from icsnn_onnx.neurons.equations import Equation
from icsnn_onnx.neurons.kind import NeuronKind

PREFIX_IF = "IFNeuron_K"
PREFIX_SIGNED = "SignedIFNeuron_K"

#: Largest K: spike levels are stored as int8 by Alg 2 and the report (and 127 units of θ per step
#: is far past any latency gain).
MAX_LEVELS = 127


def quantizer_equations(current: str) -> tuple[Equation, ...]:
    """The graded step driven by ``current``; ``lo``/``hi`` are float32 constants cast to the
    current's type, so one function serves every float type."""
    return (
        Equation("m", "Add", ("v", current)),  # m(t) = v(t-1) + z(t)
        Equation("ratio", "Div", ("m", "theta")),
        Equation("level", "Floor", ("ratio",)),  # ⌊m/θ⌋
        Equation("lo_t", "CastLike", ("lo", "m")),
        Equation("hi_t", "CastLike", ("hi", "m")),
        Equation("s", "Clip", ("level", "lo_t", "hi_t")),  # s(t) ∈ {lo … hi}
        Equation("out", "Mul", ("s", "theta")),  # out(t) = θ·s(t)
        Equation("v_next", "Sub", ("m", "out")),  # v(t) = m(t) − θ·s(t)
    )


#: Alg 2's analysis: ``v_star`` (the least start that ends one unit ahead) after this step.
GRADED_BREAKPOINT: tuple[Equation, ...] = (
    Equation("base", "Mul", ("level", "theta")),  # nθ
    Equation("rest", "Sub", ("m", "base")),  # m − nθ ∈ [0, θ)
    Equation("gap", "Sub", ("theta", "rest")),  # g: a level start from here goes one unit ahead
    Equation("lowered", "Min", ("v_star", "gap")),
    Equation("raised", "Max", ("v_star", "gap")),
    Equation("below", "Less", ("level", "lo_t")),
    Equation("at_lo", "Equal", ("level", "lo_t")),
    Equation("inside", "Less", ("level", "hi_t")),
    Equation("at_hi", "Equal", ("level", "hi_t")),
    Equation("upper", "Where", ("at_hi", "raised", "v_star")),
    Equation("middle", "Where", ("inside", "gap", "upper")),
    Equation("bottom", "Where", ("at_lo", "lowered", "middle")),
    Equation("v_star_next", "Where", ("below", "v_star", "bottom")),
)

_REFUSAL = "NIR's IF neuron fires one spike per step: graded spikes (--levels K > 1) have no NIR form"

_BUILT: dict[str, NeuronKind] = {}


def _check(levels: int) -> None:
    if not 2 <= levels <= MAX_LEVELS:
        raise ValueError(f"graded spikes need 2 <= levels <= {MAX_LEVELS}, got {levels}")


def _bounds(lo: int, hi: int) -> tuple[tuple[str, np.ndarray], ...]:
    return (("lo", np.asarray(lo, np.float32)), ("hi", np.asarray(hi, np.float32)))


def graded_if(levels: int) -> NeuronKind:
    """``icsnn::IFNeuron_K<levels>(v, z, theta) -> (out, v_next)``: the IF neuron with spikes of
    0 … ``levels`` units (the neuron of ReLU-family sites under ``--levels``)."""
    return _graded(
        f"{PREFIX_IF}{levels}",
        f"graded if ({levels} levels)",
        "z",
        levels,
        signed=False,
        doc=f"Graded IF neuron: θ·s(t), s(t) = clip(floor(m(t)/θ), 0, {levels}), reset by "
        "subtraction (icsnn_onnx.neurons.graded).",
    )


def graded_signed(levels: int) -> NeuronKind:
    """The signed graded quantizer (−K … K units), driven by a sigma-delta front's increments."""
    return _graded(
        f"{PREFIX_SIGNED}{levels}",
        f"graded signed if ({levels} levels)",
        "drive",
        levels,
        signed=True,
        doc="Graded signed IF neuron (the quantizer of the graded sigma-delta neuron).",
    )


def _graded(op_type: str, name: str, current: str, levels: int, signed: bool, doc: str) -> NeuronKind:
    """The graded quantizer kind on ``current``, built once per op type: spikes of 0 … K units,
    or −K … K where ``signed``."""
    _check(levels)
    if op_type not in _BUILT:
        _BUILT[op_type] = NeuronKind(
            name=name,
            op_type=op_type,
            states=("v",),
            current=current,
            parameters=("theta",),
            equations=quantizer_equations(current),
            doc=doc,
            nir=None,
            nir_refusal=_REFUSAL,
            constants=_bounds(-levels if signed else 0, levels),
            spike="s",
            breakpoint=GRADED_BREAKPOINT,
            signed=signed,
        )
    return _BUILT[op_type]


def levels_of(op_type: str) -> int | None:
    """K of a graded kind's op type (``IFNeuron_K3`` → 3; also the ``_K`` suffix of a graded
    sigma-delta kind), else ``None``."""
    head, sep, tail = op_type.rpartition("_K")
    if not sep or not head or not tail.isdigit():
        return None
    return int(tail)


def lookup(op_type: str) -> NeuronKind | None:
    """A graded IF kind by op type (rebuilt from K for a file written by another process)."""
    if not op_type.startswith(PREFIX_IF):
        return None
    levels = levels_of(op_type)
    return graded_if(levels) if levels is not None and 2 <= levels <= MAX_LEVELS else None
