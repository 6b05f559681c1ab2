"""The integrate-and-fire (IF) neuron with reset by subtraction — defined exactly once.

Per time step t = 1..T, with input current z(t), threshold θ > 0 and membrane potential v::

    m(t) = v(t-1) + z(t)              (integrate)
    s(t) = H(m(t) - θ)                (fire; H(0) = 1, i.e. fire when m(t) >= θ)
    v(t) = m(t) - θ·s(t)              (reset by subtraction)
    out(t) = θ·s(t)                   (the neuron's output current)

Summing over t gives the conversion identity used throughout (see docs/method.md)::

    θ·Σs/T = Σz/T - (v(T) - v(0))/T

:data:`IF_EQUATIONS` is the single definition. :func:`if_step` (numpy reference),
:func:`simulate` (reference simulator) and :func:`if_function_proto` (the ONNX function
``icsnn::IFNeuron`` that every converted model carries) are all generated from it, so the
emitted graph, the reference and the tests cannot drift apart.

:data:`CHANNELWISE_EQUATIONS` is the same neuron written in operators that ONNX Runtime's CPU
provider keeps in its blocked channel layout (NCHWc) and fuses into its convolutions: per-channel
1×1 depthwise ``Conv`` (an exact scale-and-shift here) and ``Relu``. The elementwise form breaks
that layout at every neuron (``GreaterOrEqual``/``Cast``/``Sub`` have no blocked kernels), so each
step pays two re-layouts besides the neuron itself. Float32 only; it computes bit for bit what
the equations above compute (``Relu`` of the scaled gap is 0 exactly when ``m >= θ``, see
:func:`channelwise_parameters`), and :func:`if_step_channelwise` evaluates it in numpy so the
tests can hold it to :func:`if_step`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from icsnn_onnx.elementwise import evaluate

DOMAIN = "icsnn"
DOMAIN_VERSION = 1
#: One time step of IF neurons, ``(v, z, θ) → (out, v')``: what an SNN file holds.
OP_TYPE = "IFNeuron"
#: A neuron site inside the compiler, before unrolling: ``(z, θ, v(0)) → out``. Never in a file.
SITE_OP_TYPE = "IFSite"

#: Inputs and outputs of one step, in order. ``v`` is v(t-1), ``v_next`` is v(t).
STEP_INPUTS = ("v", "z", "theta")
STEP_OUTPUTS = ("out", "v_next")


@dataclass(frozen=True)
class Equation:
    """``result = op(*args)``, one line of the neuron's dynamics."""

    result: str
    op_type: str
    args: tuple[str, ...]


IF_EQUATIONS: tuple[Equation, ...] = (
    Equation("m", "Add", ("v", "z")),  # m(t) = v(t-1) + z(t)
    Equation("fired", "GreaterOrEqual", ("m", "theta")),  # m(t) >= θ
    Equation("s", "CastLike", ("fired", "m")),  # s(t) = H(m(t) - θ) in the input's dtype
    Equation("out", "Mul", ("s", "theta")),  # out(t) = θ·s(t)
    Equation("v_next", "Sub", ("m", "out")),  # v(t) = m(t) - θ·s(t)
)


#: ``icsnn::IFNeuronChannelwise``: inputs, in order (v and z are ``[N, C, ...]``, the rest are the
#: per-channel constants from :func:`channelwise_parameters`), and the same two outputs.
CHANNELWISE_OP_TYPE = "IFNeuronChannelwise"
CHANNELWISE_INPUTS = ("v", "z", "gap_w", "gap_b", "fire_w", "fire_b", "negate_w")
CHANNELWISE_EQUATIONS: tuple[Equation, ...] = (
    Equation("m", "Add", ("v", "z")),  # m(t) = v(t-1) + z(t)
    Equation("gap", "Conv", ("m", "gap_w", "gap_b")),  # K·(θ - m): <= 0 iff m >= θ, else >= 1
    Equation("below", "Relu", ("gap",)),  # 0 iff the neuron fires, else >= 1
    Equation("fire", "Conv", ("below", "fire_w", "fire_b")),  # θ - θ·below: θ, or <= 0
    Equation("out", "Relu", ("fire",)),  # out(t) = θ·s(t)
    Equation("negated", "Conv", ("out", "negate_w")),  # -out(t)
    Equation("v_next", "Add", ("m", "negated")),  # v(t) = m(t) - θ·s(t)
)

# Precision bits of float32's significand (24) and the smallest threshold whose gap scale K is
# still a finite float32 (K = 2^(25 - e) with θ = f·2^e, 0.5 <= f < 1; 2^127 is the largest).
_FLOAT32_BITS = 24
_MIN_CHANNELWISE_EXPONENT = 25 - 127


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


def _evaluate(equations: tuple[Equation, ...], env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``env`` with every equation's result added, in order (numpy semantics of the ops)."""
    for eq in equations:
        env[eq.result] = evaluate(eq.op_type, [env[a] for a in eq.args], {})
    return env


def _step(v: np.ndarray, z: np.ndarray, theta: np.ndarray) -> dict[str, np.ndarray]:
    """Every value of one IF step (``m``, ``fired``, ``out``, ``v_next``, …), by name."""
    return _evaluate(IF_EQUATIONS, {"v": np.asarray(v), "z": np.asarray(z), "theta": np.asarray(theta)})


def if_step(v: np.ndarray, z: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One IF step: returns ``(out(t), v(t))`` from ``v(t-1)``, ``z(t)`` and ``θ``."""
    env = _step(v, z, theta)
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
    for z_t in z:
        env = _step(v, z_t, theta)
        yield env
        v = env["v_next"]


def simulate(z: np.ndarray, params: IFParams) -> IFTrace:
    """Run IF neurons over ``T = len(z)`` steps of input current ``z[t]`` (reference simulator)."""
    _, v, _ = _start(z, params)
    outs, vs = [], [np.array(v)]
    for step in steps(z, params):
        outs.append(step["out"])
        vs.append(step["v_next"])
    return IFTrace(out=np.stack(outs), v=np.stack(vs))


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
    theta = np.asarray(threshold).astype(z.dtype)
    v_star: np.ndarray = np.asarray(np.inf, z.dtype)
    count: np.ndarray = np.zeros((), np.int32)
    for env in steps(z, IFParams(theta)):
        env = _evaluate(BREAKPOINT_EQUATIONS, {**env, "v_star": v_star})
        v_star, count = env["v_star_next"], count + env["fired"]
    shape = np.broadcast_shapes(z.shape[1:], theta.shape)
    return np.broadcast_to(count, shape), np.broadcast_to(v_star, shape)


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


def channelwise_parameters(threshold: np.ndarray) -> dict[str, np.ndarray]:
    """The constants of :data:`CHANNELWISE_EQUATIONS` for per-channel thresholds ``θ[C]``.

    Why it is exact, with ``θ = f·2^e`` (0.5 <= f < 1) and ``K = 2^(25 - e)``: every float32 below
    θ is at least ``2^(e-25)`` below it (the float32 spacing under θ), so for ``m < θ`` the real
    ``K·(θ - m)`` is at least 1; for ``m >= θ`` it is <= 0. ``K·m`` is exact (a power of two), so
    the Conv rounds the difference once, and rounding is monotone: ``gap >= 1`` or ``gap <= 0``
    survive it. After ``Relu``, ``below`` is 0 (fire) or >= 1 (not). Then ``θ - θ·below`` is θ
    exactly for 0 and <= 0 for anything >= 1 (``θ·below`` rounds to >= θ), so ``Relu`` leaves θ·s
    exactly. ``-1·out`` is exact, so ``m + (-out)`` rounds as ``m - out`` does.
    """
    theta = np.asarray(threshold, np.float32).reshape(-1)
    _, exponent = np.frexp(theta)
    if np.any(exponent < _MIN_CHANNELWISE_EXPONENT):
        raise ValueError("threshold too small for the channelwise form (needs θ >= 2^-103)")
    scale = np.ldexp(np.float32(1), (_FLOAT32_BITS + 1) - exponent).astype(np.float32)
    channels = theta.size

    def weight(value: np.ndarray) -> np.ndarray:  # one 1×1 filter per channel: [C, 1, 1, 1]
        return np.asarray(value, np.float32).reshape(channels, 1, 1, 1)

    return {
        "gap_w": weight(-scale),
        "gap_b": (scale * theta).astype(np.float32),
        "fire_w": weight(-theta),
        "fire_b": theta.copy(),
        "negate_w": weight(np.full(channels, -1.0)),
    }


def _pointwise_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A 1×1 depthwise Conv (one weight, one bias per channel on axis 1), in x's dtype."""
    shape = (-1,) + (1,) * (x.ndim - 2)
    y = x * weight.reshape(shape).astype(x.dtype)
    return y if bias is None else y + bias.reshape(shape).astype(x.dtype)


def if_step_channelwise(
    v: np.ndarray, z: np.ndarray, parameters: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One step of :data:`CHANNELWISE_EQUATIONS` in numpy: ``(out(t), v(t))``, as :func:`if_step`."""
    env: dict[str, np.ndarray] = {"v": np.asarray(v), "z": np.asarray(z), **parameters}
    with np.errstate(over="ignore", invalid="ignore"):  # ±inf keeps its sign: still exact
        for eq in CHANNELWISE_EQUATIONS:
            args = [env[a] for a in eq.args]
            env[eq.result] = (
                _pointwise_conv(*args) if eq.op_type == "Conv" else evaluate(eq.op_type, args, {})
            )
    return env["out"], env["v_next"]


def if_function_proto(opset: int) -> onnx.FunctionProto:
    """The ONNX function ``icsnn::IFNeuron(v, z, theta) -> (out, v_next)``, from IF_EQUATIONS.

    A model-local function: ONNX Runtime inlines it on any execution provider, so converted
    models need no custom-op library.
    """
    nodes = [helper.make_node(eq.op_type, list(eq.args), [eq.result], name=eq.result) for eq in IF_EQUATIONS]
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        list(STEP_INPUTS),
        list(STEP_OUTPUTS),
        nodes,
        [helper.make_opsetid("", opset)],
        doc_string=__doc__.split("\n\n")[1] if __doc__ else "",
    )


def channelwise_function_proto(opset: int) -> onnx.FunctionProto:
    """``icsnn::IFNeuronChannelwise``, from CHANNELWISE_EQUATIONS; attribute ``channels`` is the
    depthwise Convs' group count."""
    group = onnx.AttributeProto()
    group.name, group.ref_attr_name, group.type = "group", "channels", onnx.AttributeProto.INT
    nodes = []
    for eq in CHANNELWISE_EQUATIONS:
        node = helper.make_node(eq.op_type, list(eq.args), [eq.result], name=eq.result)
        if eq.op_type == "Conv":
            node.attribute.append(group)
        nodes.append(node)
    return helper.make_function(
        DOMAIN,
        CHANNELWISE_OP_TYPE,
        list(CHANNELWISE_INPUTS),
        list(STEP_OUTPUTS),
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=["channels"],
        doc_string="The IF neuron in NCHWc-friendly operators (see icsnn_onnx.neuron).",
    )
