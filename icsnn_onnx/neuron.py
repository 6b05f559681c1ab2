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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from icsnn_onnx.elementwise import evaluate

DOMAIN = "icsnn"
DOMAIN_VERSION = 1
OP_TYPE = "IFNeuron"

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
    env: dict[str, np.ndarray] = {"v": np.asarray(v), "z": np.asarray(z), "theta": np.asarray(theta)}
    for eq in IF_EQUATIONS:
        env[eq.result] = evaluate(eq.op_type, [env[a] for a in eq.args], {})
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


def simulate(z: np.ndarray, params: IFParams) -> IFTrace:
    """Run IF neurons over ``T = len(z)`` steps of input current ``z[t]`` (reference simulator)."""
    z = np.asarray(z)
    if z.ndim < 1 or z.shape[0] < 1:
        raise ValueError("z must have a leading time axis of length >= 1")
    v = np.broadcast_to(params.v_init.astype(z.dtype), np.broadcast_shapes(params.v_init.shape, z.shape[1:]))
    theta = params.threshold.astype(z.dtype)
    outs, vs = [], [np.array(v)]
    for z_t in z:
        out, v = if_step(v, z_t, theta)
        outs.append(out)
        vs.append(v)
    return IFTrace(out=np.stack(outs), v=np.stack(vs))


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
