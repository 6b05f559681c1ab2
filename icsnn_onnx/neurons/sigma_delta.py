"""The sigma-delta activation neuron: a spiking neuron for any elementwise activation ``f``.

It integrates its input current (sigma), evaluates ``f`` on the mean input so far, and emits, as
signed spikes of size θ, the change of ``t·f(mean)`` since the last step (delta) that its membrane
has not yet passed on — reset by subtraction, as the IF neuron. Per step t = 1..T::

    acc(t)   = acc(t-1) + z(t)                 (integrate the current; acc(0) = 0)
    d(t)     = t · f(acc(t) / t)               (the output the mean input calls for so far; d(0) = 0)
    m(t)     = v(t-1) + d(t) − d(t-1)          (the membrane takes the increment)
    s(t)     = [m(t) ≥ θ] − [m(t) < 0]         (a signed spike)
    v(t)     = m(t) − θ·s(t)                   (reset by subtraction)
    out(t)   = θ·s(t)

Summed over t: ``θ·Σ_{k≤t} s(k) = t·f(x̄_t) − (v(t) − v(0))``, with ``x̄_t`` the mean current of the
first t steps — the IF neuron's identity (docs/method.md eq. 1) with ``f(x̄)`` in place of ``x̄``.
While the increments stay within ``[−θ, θ]`` the membrane stays in ``[0, θ)``, so the running sum
of the spike train tracks ``t·f(x̄_t)`` within θ (within θ/2 from ``v(0) = θ/2``). For ``f = id``
it is a signed IF neuron; it reproduces ``f`` exactly in the mean, whatever f is, and NIR has no
such neuron. docs/method.md §14 derives it, Alg 1/2/3 and the thresholds for it.

One kind per function: :func:`sigma_delta` builds the kind of ``f`` in a float type, its ONNX
function ``icsnn::SigmaDelta_<digest>`` with ``f``'s own nodes inlined (a file carries one function
per distinct activation). Every such kind has the same signature, ``(v, acc, d, z, theta, step) ->
(out, v', acc', d')``, which :data:`SIGNATURE` stands for where only the names matter (the runtime
reading any file).
"""

from __future__ import annotations

import numpy as np

from icsnn_onnx.neurons.equations import Equation
from icsnn_onnx.neurons.function import ElementwiseFunction
from icsnn_onnx.neurons.graded import graded_signed, levels_of, quantizer_equations
from icsnn_onnx.neurons.kind import NeuronKind

PREFIX = "SigmaDelta_"
NAME = "sigma-delta"

#: The delta-sigma front: running mean, f, the increment of t·f(mean). Reads ``z``, writes ``drive``.
_FRONT_IN = (
    Equation("acc_next", "Add", ("acc", "z")),  # acc(t) = acc(t-1) + z(t)
    Equation("inverse", "Reciprocal", ("step",)),  # 1/t
    Equation("mean", "Mul", ("acc_next", "inverse")),  # x̄_t
)
_FRONT_OUT = (
    Equation("d_next", "Mul", ("target", "step")),  # d(t) = t·f(x̄_t)
    Equation("drive", "Sub", ("d_next", "d")),  # d(t) − d(t-1)
)

#: The signed quantizer with reset by subtraction, driven by ``drive``.
SIGNED_EQUATIONS: tuple[Equation, ...] = (
    Equation("m", "Add", ("v", "drive")),  # m(t) = v(t-1) + drive(t)
    Equation("up", "GreaterOrEqual", ("m", "theta")),  # m(t) >= θ: +1
    Equation("down", "Less", ("m", "zero")),  # m(t) < 0: −1
    Equation("up_count", "CastLike", ("up", "m")),
    Equation("down_count", "CastLike", ("down", "m")),
    Equation("s", "Sub", ("up_count", "down_count")),  # s(t) ∈ {−1, 0, 1}
    Equation("out", "Mul", ("s", "theta")),  # out(t) = θ·s(t)
    Equation("v_next", "Sub", ("m", "out")),  # v(t) = m(t) − θ·s(t)
)

#: Alg 2's one-run analysis of the signed quantizer (docs/method.md §14): against the run from
#: v(0) = 0, a start δ ∈ [0, θ) is level with it or one spike ahead; after a step that fired +1
#: it stays ahead iff it was and δ ≥ 2θ − m, after a silent one it is ahead iff δ ≥ θ − m, after
#: one that fired −1 it is ahead iff it was or δ ≥ −m.
SIGNED_BREAKPOINT: tuple[Equation, ...] = (
    Equation("gap", "Sub", ("theta", "m")),  # θ − m(t)
    Equation("fall", "Add", ("theta", "gap")),  # 2θ − m(t)
    Equation("rise", "Neg", ("m",)),  # −m(t)
    Equation("raised", "Max", ("v_star", "fall")),
    Equation("lowered", "Min", ("v_star", "rise")),
    Equation("below", "Where", ("down", "lowered", "gap")),
    Equation("v_star_next", "Where", ("up", "raised", "below")),
)

_REFUSAL = "NIR has no neuron that fires on a function of its mean input (a sigma-delta neuron)"

_KINDS: dict[str, NeuronKind] = {}  # op type → kind, for the kinds built in this process

#: The quantizer alone, driven by the front's increments: a signed IF neuron (binary, or graded).
SIGNED_IF = NeuronKind(
    name="signed if",
    op_type="SignedIFNeuron",
    states=("v",),
    current="drive",
    parameters=("theta",),
    equations=SIGNED_EQUATIONS,
    doc="Signed IF neuron (the quantizer of the sigma-delta neuron).",
    constants=(("zero", np.zeros((), np.float32)),),
    spike="s",
    breakpoint=SIGNED_BREAKPOINT,
    signed=True,
)


def front(f: ElementwiseFunction, z: np.ndarray) -> np.ndarray:
    """The drives ``d(t) − d(t−1)`` of all T steps of current ``z[T, …]`` at once, in z's float type,
    rounding as the step-by-step equations do: Σ in step order, times 1/t, f, times t."""
    z = np.asarray(z)
    steps = np.arange(1, len(z) + 1, dtype=z.dtype).reshape(-1, *([1] * (z.ndim - 1)))
    acc = np.cumsum(z, axis=0, dtype=z.dtype)
    with np.errstate(all="ignore"):
        d = f(acc * np.reciprocal(steps)) * steps
    drive = np.empty_like(d)
    drive[0] = d[0]
    np.subtract(d[1:], d[:-1], out=drive[1:])
    return drive


def sigma_delta(f: ElementwiseFunction, dtype: np.dtype | type = np.float32, levels: int = 1) -> NeuronKind:
    """The sigma-delta kind of ``f`` in float type ``dtype`` with spikes of up to ``levels`` units
    (built once per function, type and levels)."""
    dtype = np.dtype(dtype)
    op_type = f"{PREFIX}{f.digest(dtype)}" + (f"_K{levels}" if levels > 1 else "")
    if op_type not in _KINDS:
        body, constants = f.renamed("f.", "mean", "target")
        typed = tuple((constants[name], _typed(value, dtype)) for name, value in f.constants)
        graded = graded_signed(levels) if levels > 1 else None
        quantizer = SIGNED_EQUATIONS if graded is None else quantizer_equations("drive")
        # the binary quantizer compares with 0; the graded one clips to its bounds
        bounds = (("zero", np.zeros((), dtype)),) if graded is None else graded.constants
        _KINDS[op_type] = NeuronKind(
            name=NAME,
            op_type=op_type,
            states=("v", "acc", "d"),
            current="z",
            parameters=("theta",),
            equations=(*_FRONT_IN, *body, *_FRONT_OUT, *quantizer),
            doc=f"Sigma-delta neuron of f = {f.description or 'an elementwise function'}: signed spikes "
            "θ·s(t) whose sum tracks t·f(mean input so far) (icsnn_onnx.neurons.sigma_delta).",
            readout_transfer=False,
            nir=None,
            nir_refusal=_REFUSAL,
            constants=(*bounds, *typed),
            step_count="step",
            spike="s",
            breakpoint=SIGNED_BREAKPOINT if graded is None else graded.breakpoint,
            signed=True,
            front=lambda z, f=f: front(f, z),
            quantizer=SIGNED_IF if graded is None else graded,
        )
    return _KINDS[op_type]


def _typed(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(dtype) if value.dtype.kind == "f" else value


def lookup(op_type: str) -> NeuronKind | None:
    """A sigma-delta kind by its op type: the one built here, or, for a file written elsewhere,
    :data:`SIGNATURE` (same inputs and outputs)."""
    if not op_type.startswith(PREFIX):
        return None
    if op_type in _KINDS:
        return _KINDS[op_type]
    levels = levels_of(op_type)  # a graded one: the signature with its K (its cost per step)
    return sigma_delta(SIGNATURE_FUNCTION, np.float32, levels) if levels else SIGNATURE


#: The signature every sigma-delta kind shares (here with f = identity, a signed IF neuron).
SIGNATURE_FUNCTION = ElementwiseFunction((Equation("y", "Identity", ("x",)),), description="identity")
SIGNATURE = sigma_delta(SIGNATURE_FUNCTION, np.float32)
