"""The IF neuron of :mod:`.if_neuron` in the CPU provider's own operators (``--target cpu``).

:data:`CHANNELWISE_EQUATIONS` is the same neuron written in operators that ONNX Runtime's CPU
provider keeps in its blocked channel layout (NCHWc) and fuses into its convolutions: per-channel
1×1 depthwise ``Conv`` (an exact scale-and-shift here) and ``Relu``. The elementwise form breaks
that layout at every neuron (``GreaterOrEqual``/``Cast``/``Sub`` have no blocked kernels), so each
step pays two re-layouts besides the neuron itself. Float32 only; it computes bit for bit what
the IF equations compute (``Relu`` of the scaled gap is 0 exactly when ``m >= θ``, see
:func:`channelwise_parameters`), and :func:`if_step_channelwise` evaluates it in numpy so the
tests can hold it to :func:`~.if_neuron.if_step`. Not a kind of its own: a second form of the IF
neuron (same states, same current, same outputs), which NIR export refuses by name.
"""

from __future__ import annotations

import numpy as np

from icsnn_onnx.neurons.equations import AttributeRef, Equation
from icsnn_onnx.neurons.kind import NeuronKind

_GROUP = (("group", AttributeRef("channels")),)  # the depthwise Convs' groups: one per channel

CHANNELWISE_EQUATIONS: tuple[Equation, ...] = (
    Equation("m", "Add", ("v", "z")),  # m(t) = v(t-1) + z(t)
    Equation("gap", "Conv", ("m", "gap_w", "gap_b"), _GROUP),  # K·(θ - m): <= 0 iff m >= θ, else >= 1
    Equation("below", "Relu", ("gap",)),  # 0 iff the neuron fires, else >= 1
    Equation("fire", "Conv", ("below", "fire_w", "fire_b"), _GROUP),  # θ - θ·below: θ, or <= 0
    Equation("out", "Relu", ("fire",)),  # out(t) = θ·s(t)
    Equation("negated", "Conv", ("out", "negate_w"), _GROUP),  # -out(t)
    Equation("v_next", "Add", ("m", "negated")),  # v(t) = m(t) - θ·s(t)
)

#: The per-channel constants the step reads after ``(v, z)``, from :func:`channelwise_parameters`.
CHANNELWISE_PARAMETERS = ("gap_w", "gap_b", "fire_w", "fire_b", "negate_w")

# Precision bits of float32's significand (24) and the smallest threshold whose gap scale K is
# still a finite float32 (K = 2^(25 - e) with θ = f·2^e, 0.5 <= f < 1; 2^127 is the largest).
_FLOAT32_BITS = 24
_MIN_CHANNELWISE_EXPONENT = 25 - 127


def _pointwise_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A 1×1 depthwise Conv (one weight, one bias per channel on axis 1), in x's dtype."""
    shape = (-1,) + (1,) * (x.ndim - 2)
    y = x * weight.reshape(shape).astype(x.dtype)
    return y if bias is None else y + bias.reshape(shape).astype(x.dtype)


#: ``icsnn::IFNeuronChannelwise(v, z, gap_w, gap_b, fire_w, fire_b, negate_w) -> (out, v_next)``,
#: attribute ``channels``: the depthwise Convs' group count.
IF_CHANNELWISE = NeuronKind(
    name="if (cpu form)",
    op_type="IFNeuronChannelwise",
    states=("v",),
    current="z",
    parameters=CHANNELWISE_PARAMETERS,
    equations=CHANNELWISE_EQUATIONS,
    doc="The IF neuron in NCHWc-friendly operators (see icsnn_onnx.neurons.if_channelwise).",
    nir_refusal="convert with --target portable to export",
    attributes=("channels",),
    evaluators={"Conv": _pointwise_conv},
)


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


def if_step_channelwise(
    v: np.ndarray, z: np.ndarray, parameters: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One step of :data:`CHANNELWISE_EQUATIONS` in numpy: ``(out(t), v(t))``, as ``if_step``."""
    with np.errstate(over="ignore", invalid="ignore"):  # ±inf keeps its sign: still exact
        env = IF_CHANNELWISE.step({"v": v, "z": z, **parameters})
    return env["out"], env["v_next"]
