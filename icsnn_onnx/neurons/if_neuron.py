"""The integrate-and-fire (IF) neuron with reset by subtraction — defined exactly once.

Per time step t = 1..T, with input current z(t), threshold θ > 0 and membrane potential v::

    m(t) = v(t-1) + z(t)              (integrate)
    s(t) = H(m(t) - θ)                (fire; H(0) = 1, i.e. fire when m(t) >= θ)
    v(t) = m(t) - θ·s(t)              (reset by subtraction)
    out(t) = θ·s(t)                   (the neuron's output current)

Summing over t gives the conversion identity used throughout (see docs/method.md)::

    θ·Σs/T = Σz/T - (v(T) - v(0))/T

:data:`IF_EQUATIONS` is the single definition; :data:`IF` is the neuron kind built on it, which
generates the numpy reference (:func:`if_step`, :func:`steps`, :func:`simulate`) and the ONNX
function ``icsnn::IFNeuron`` every converted model carries, so the emitted graph, the reference
and the tests cannot drift apart. :data:`BREAKPOINT_EQUATIONS` is Alg 2's one-run analysis of the
same neuron (:func:`count_breakpoint`). The same neuron in the CPU provider's blocked operators is
:mod:`.if_channelwise`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from icsnn_onnx.neurons.equations import Equation
from icsnn_onnx.neurons.kind import NeuronKind
from icsnn_onnx.neurons.kind import count_breakpoint as kind_count_breakpoint

IF_EQUATIONS: tuple[Equation, ...] = (
    Equation("m", "Add", ("v", "z")),  # m(t) = v(t-1) + z(t)
    Equation("fired", "GreaterOrEqual", ("m", "theta")),  # m(t) >= θ
    Equation("s", "CastLike", ("fired", "m")),  # s(t) = H(m(t) - θ) in the input's dtype
    Equation("out", "Mul", ("s", "theta")),  # out(t) = θ·s(t)
    Equation("v_next", "Sub", ("m", "out")),  # v(t) = m(t) - θ·s(t)
)

#: Alg 2's one-run analysis (:func:`count_breakpoint`), one step of it after the IF step from
#: ``v(0) = 0``: ``v_star``, the least start that ends one spike ahead of that run after the steps
#: so far, updated from ``m(t)`` and ``fired(t)``. A silent step offers ``θ − m(t)`` (a start that
#: high fires here, one spike ahead); a firing step raises every offer to at least ``2θ − m(t)``
#: (below that, the start falls back: level again).
BREAKPOINT_EQUATIONS: tuple[Equation, ...] = (
    Equation("gap", "Sub", ("theta", "m")),  # θ − m(t)
    Equation("fall", "Add", ("theta", "gap")),  # 2θ − m(t)
    Equation("raised", "Max", ("v_star", "fall")),
    Equation("lowered", "Min", ("v_star", "gap")),
    Equation("v_star_next", "Where", ("fired", "raised", "lowered")),
)


#: ``icsnn::IFNeuron(v, z, theta) -> (out, v_next)``: one step of IF neurons, as a file holds it.
#: NIR's ``IF`` is the same neuron (reset by subtraction); its doc string is what every converted
#: file has carried since the first release.
IF = NeuronKind(
    name="if",
    op_type="IFNeuron",
    states=("v",),
    current="z",
    parameters=("theta",),
    equations=IF_EQUATIONS,
    doc="Per time step t = 1..T, with input current z(t), threshold θ > 0 and membrane potential v::",
    nir="IF",
    breakpoint=BREAKPOINT_EQUATIONS,
)


@dataclass(frozen=True)
class IFParams:
    """Frozen parameters of a population of IF neurons.

    ``threshold`` and ``v_init`` broadcast against the input current (e.g. shape ``[C, 1, 1]``
    for per-channel values of a ``[N, C, H, W]`` tensor, or a scalar for a layer-wise value).
    """

    threshold: np.ndarray
    v_init: np.ndarray = field(default_factory=lambda: np.zeros((), np.float32))

    def __post_init__(self) -> None:
        threshold = np.asarray(self.threshold)
        v_init = np.asarray(self.v_init)
        if threshold.dtype.kind != "f" or v_init.dtype.kind != "f":
            raise TypeError("threshold and v_init must be floating-point arrays")
        if threshold.size == 0:
            raise ValueError("threshold is empty")
        if not np.all(np.isfinite(threshold)) or np.any(threshold <= 0):
            raise ValueError("threshold must be finite and > 0 everywhere")
        if not np.all(np.isfinite(v_init)):
            raise ValueError("v_init must be finite")
        try:
            np.broadcast_shapes(threshold.shape, v_init.shape)
        except ValueError:
            raise ValueError(
                f"threshold shape {threshold.shape} and v_init shape {v_init.shape} do not broadcast"
            ) from None
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "v_init", v_init)


def if_step(v: np.ndarray, z: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One IF step: returns ``(out(t), v(t))`` from ``v(t-1)``, ``z(t)`` and ``θ``."""
    env = IF.step({"v": v, "z": z, "theta": theta})
    return env["out"], env["v_next"]


@dataclass(frozen=True)
class IFTrace:
    """Result of :func:`simulate`: per-step outputs ``[T, ...]`` and potentials ``[T+1, ...]``."""

    out: np.ndarray
    v: np.ndarray

    @property
    def spikes(self) -> np.ndarray:
        """Spike counts per step (``out / θ``), as integers."""
        nonzero = self.out != 0
        return nonzero.astype(np.int64)


def _start(z: np.ndarray, params: IFParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(z, v(0), θ)`` in z's dtype, v(0) broadcast to a step's shape."""
    z = np.asarray(z)
    if z.ndim < 1 or z.shape[0] < 1:
        raise ValueError("z must have a leading time axis of length >= 1")
    v = np.broadcast_to(params.v_init.astype(z.dtype), np.broadcast_shapes(params.v_init.shape, z.shape[1:]))
    return z, v, params.threshold.astype(z.dtype)


def steps(z: np.ndarray, params: IFParams) -> Iterator[dict[str, np.ndarray]]:
    """Every value of each step (``m``, ``fired``, ``out``, ``v_next``, …) of IF neurons over
    ``T = len(z)`` steps of input current ``z[t]``, one step at a time: for callers that keep a
    few of them (Alg 2 keeps the spike bits and v(T))."""
    z, v, theta = _start(z, params)
    yield from IF.steps(z, {"theta": theta}, {"v": v})


def simulate(z: np.ndarray, params: IFParams) -> IFTrace:
    """Run IF neurons over ``T = len(z)`` steps of input current ``z[t]`` (reference simulator)."""
    _, v, _ = _start(z, params)
    outs, vs = [], [np.array(v)]
    for step in steps(z, params):
        outs.append(step["out"])
        vs.append(step["v_next"])
    return IFTrace(out=np.stack(outs), v=np.stack(vs))


def count_breakpoint(z: np.ndarray, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spike counts over ``T = len(z)`` steps as a function of ``v(0)`` in ``[0, θ)``, from one run.

    Returns ``(n, v*)``: started at ``v(0)``, each neuron fires ``n + [v(0) >= v*]`` times
    (``v* = inf``: never one more). Why (docs/method.md §2b): against the run from 0, a start
    ``δ`` in ``[0, θ)`` higher is, at every step, either level with it and ``δ`` above, or one spike
    ahead and ``θ − δ`` below. It goes ahead at a silent step whose ``m(t) >= θ − δ`` and falls back
    at a firing step whose ``m(t) < 2θ − δ``; no other step changes it. So it ends ahead iff some
    silent step has ``δ >= θ − m(t)`` and ``δ >= 2θ − m(t')`` at every firing step ``t'`` after it:
    ``v* = min over silent t of max(θ − m(t), max over firing t' > t of 2θ − m(t'))``, which
    :data:`BREAKPOINT_EQUATIONS` accumulate forwards (a max over later firing steps distributes
    over the min of the offers so far). Exact in real arithmetic; in z's dtype a start within its
    rounding of ``v*`` can differ from a simulation.
    """
    z = np.asarray(z)
    theta = np.asarray(IFParams(np.asarray(threshold)).threshold).astype(z.dtype)
    return kind_count_breakpoint(IF, z, {"theta": theta})


def constant_input_rate(z: np.ndarray, params: IFParams, T: int) -> np.ndarray:
    """Mean output over T steps for a constant input current ``z``, in closed form.

    With ``0 <= v(0) < θ``: ``N_T = clip(floor((T·z + v(0)) / θ), 0, T)`` spikes (docs/method.md,
    eq. 2), so the mean output is ``θ·N_T / T`` — what :func:`simulate` yields, without the
    T-step loop (up to rounding exactly at a threshold crossing).
    """
    theta, v0 = params.threshold, params.v_init
    if np.any(v0 < 0) or np.any(v0 >= theta):
        raise ValueError("the closed form needs 0 <= v_init < threshold")
    count = np.clip(np.floor((T * z + v0) / theta), 0, T)
    return theta * count / T
