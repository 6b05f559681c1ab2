"""Steps of what has state over time: IF neurons (portable, or in the CPU provider's blocked
operators for ``--target cpu``) and MaxPool gates."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.contract import NEURON_DOMAIN, step_name
from icsnn_onnx.neurons import IF, IF_CHANNELWISE, NeuronKind
from icsnn_onnx.neurons.if_channelwise import channelwise_parameters
from icsnn_onnx.passes.insert_neurons import site_kind
from icsnn_onnx.passes.unroll.builder import Builder

logger = logging.getLogger(__name__)

# ONNX Runtime's CPU provider blocks channels by 8 (AVX2) or 16 (AVX-512); a channel count it
# cannot block would run the channelwise neuron's Convs unblocked, slower than elementwise ops.
CHANNEL_BLOCK = 16


class StatefulSteps(Builder):
    def _stateful_steps(
        self, node: gs.Node, inputs: list[gs.Tensor], y: gs.Tensor, xs: list[gs.Tensor]
    ) -> list[gs.Tensor]:
        """Emit the T steps of a node with state over time (a neuron site or a MaxPool gate)."""
        if node.name in self.gates:
            return self._gate_steps(node, y, xs)
        return self._site_steps(node, inputs, y, xs)

    def _gate_steps(self, node: gs.Node, y: gs.Tensor, xs: list[gs.Tensor]) -> list[gs.Tensor]:
        """MaxPool ``gate`` policy: each window forwards the spikes of its unit with the highest
        input accumulated so far, ``acc(t) = Σ_{τ≤t} x(τ)`` (MaxPool's Indices on ``acc``, which
        index the flattened input)."""
        acc = None
        outs = []
        for t, x_t in enumerate(xs, start=1):
            out, acc = self._gate_step(node, y, acc, x_t, lambda base, t=t: step_name(base, t))
            outs.append(out)
        return outs

    def _gate_step(
        self, node: gs.Node, y: gs.Tensor, acc: gs.Tensor | None, x_t: gs.Tensor, name: Callable[[str], str]
    ) -> tuple[gs.Tensor, gs.Tensor]:
        """One step of a gate: ``(out(t), acc(t))`` from ``acc(t-1)`` (``None`` at step 1)."""
        flat_shape = self._const(f"{node.name}.flat_shape", [-1])
        if acc is None:
            acc_t = x_t
        else:
            acc_t = gs.Variable(name(f"{node.name}.acc"), x_t.dtype, x_t.shape)
            self._add("Add", name(f"{node.name}.acc"), [acc, x_t], [acc_t])
        pooled = gs.Variable(name(f"{node.name}.acc_max"), y.dtype, y.shape)
        winner = gs.Variable(name(f"{node.name}.winner"), np.int64, y.shape)
        self._add("MaxPool", name(f"{node.name}.winner"), [acc_t], [pooled, winner], attrs=dict(node.attrs))
        flat = gs.Variable(name(f"{node.name}.flat"), x_t.dtype, None)
        self._add("Reshape", name(f"{node.name}.flat"), [x_t, flat_shape], [flat])
        out = gs.Variable(name(y.name), y.dtype, y.shape)
        self._add("Gather", name(node.name), [flat, winner], [out], attrs={"axis": 0})
        return out, acc_t

    def _site_steps(
        self, node: gs.Node, inputs: list[gs.Tensor], y: gs.Tensor, currents: list[gs.Tensor]
    ) -> list[gs.Tensor]:
        """Emit the T steps of the (detached) neuron site ``node`` writing ``y``; return out(1..T)."""
        kind = site_kind(node)
        parameters, initial = site_inputs(kind, inputs)
        return self._neuron_steps(kind, node.name, parameters, initial, y, currents)

    def _neuron_steps(
        self,
        kind: NeuronKind,
        name: str,
        parameters: dict[str, gs.Tensor],
        initial: dict[str, gs.Tensor],
        y: gs.Tensor,
        currents: list[gs.Tensor],
    ) -> list[gs.Tensor]:
        """Emit T steps of neurons ``name`` of ``kind`` writing ``y@t`` (each state ``s`` as
        ``name.s@t``); return out(1..T)."""
        self.membranes[(y.name, 0)] = initial[kind.membrane]
        attrs: dict[str, object] = {}
        channelwise = None
        if self.channelwise and kind is IF:
            channelwise = self._channelwise_inputs(name, parameters["theta"], initial["v"], y, currents[0])
        if channelwise is not None:
            v0, parameters = channelwise
            kind, initial, attrs = IF_CHANNELWISE, {"v": v0}, {"channels": y.shape[1]}
            self.channelwise_sites.append(name)
        outs, states = [], dict(initial)
        for t, z_t in enumerate(currents, start=1):
            out = gs.Variable(step_name(y.name, t), y.dtype, y.shape)
            after = {s: gs.Variable(step_name(f"{name}.{s}", t), y.dtype, y.shape) for s in kind.states}
            clock = self._clock(t, np.dtype(y.dtype or np.float32)) if kind.step_count else None
            self._neuron_step(kind, step_name(name, t), states, z_t, parameters, out, after, attrs, clock)
            outs.append(out)
            self.membranes[(y.name, t)] = after[kind.membrane]
            states = after
        return outs

    def _neuron_step(
        self,
        kind: NeuronKind,
        name: str,
        states: dict[str, gs.Tensor],
        z: gs.Tensor,
        parameters: dict[str, gs.Tensor],
        out: gs.Tensor,
        after: dict[str, gs.Tensor],
        attrs: dict[str, object] | None = None,
        clock: gs.Tensor | None = None,
    ) -> None:
        """One step of ``kind``'s neurons, e.g. ``(out(t), v(t)) = IFNeuron(v(t-1), z(t), θ)``:
        its states before and ``after``, by name; ``clock``: the step number, for kinds that
        read it."""
        values = {**states, kind.current: z, **parameters}
        if kind.step_count:
            values[kind.step_count] = clock
        self._add(
            kind.op_type,
            name,
            [values[i] for i in kind.inputs],
            [out, *(after[s] for s in kind.states)],
            attrs=attrs or {},
            domain=NEURON_DOMAIN,
        )

    def _clock(self, t: int, dtype: np.dtype) -> gs.Tensor:
        """The step number ``t`` as a float scalar of ``dtype`` (one constant per step and type)."""
        return self._const(f"icsnn.step_{t}.{dtype}", float(t), dtype)

    def _channelwise_inputs(
        self, name: str, theta: gs.Tensor, v0: gs.Tensor, y: gs.Tensor, z_1: gs.Tensor
    ) -> tuple[gs.Tensor, dict[str, gs.Tensor]] | None:
        """For a site the channelwise neuron fits: v(0) materialized in z's layout (a 1×1 Conv of
        step 1's current with zero weights and v(0) as bias), and the neuron's Conv constants."""
        shape = y.shape
        if (
            np.dtype(y.dtype or np.float32) != np.float32
            or shape is None
            or len(shape) != 4
            or not isinstance(shape[1], int)
            or shape[1] % CHANNEL_BLOCK
            or not isinstance(theta, gs.Constant)
            or not isinstance(v0, gs.Constant)
        ):
            logger.debug(
                "%s: elementwise IF neuron (needs float32 [N, C, H, W], C %% %d == 0)", name, CHANNEL_BLOCK
            )
            return None
        channels = shape[1]
        per_channel = [_per_channel(c.values, channels) for c in (theta, v0)]
        if per_channel[0] is None or per_channel[1] is None:
            logger.debug("%s: elementwise IF neuron (θ and v(0) must be per channel)", name)
            return None
        threshold, v_init = per_channel
        try:
            parameters = channelwise_parameters(threshold)
        except ValueError as err:
            logger.debug("%s: elementwise IF neuron (%s)", name, err)
            return None
        constants = {
            key: self._const(f"{name}.{key}", parameters[key], np.float32)
            for key in IF_CHANNELWISE.parameters
        }
        v0_full = gs.Variable(step_name(f"{name}.v", 0), y.dtype, y.shape)
        self._add(
            "Conv",
            step_name(f"{name}.v", 0),
            [
                z_1,
                self._const(f"{name}.v0_weight", np.zeros((channels, 1, 1, 1)), np.float32),
                self._const(f"{name}.v0_bias", v_init, np.float32),
            ],
            [v0_full],
            attrs={"group": channels},
        )
        return v0_full, constants


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as ``[C]`` if it is one number or one per channel of an ``[N, C, H, W]`` tensor."""
    value = np.asarray(value, np.float32)
    if value.size == 1:
        return np.full(channels, value.reshape(()), np.float32)
    dims = list(value.shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    return value.reshape(channels) if dims == [channels, 1, 1] else None


def site_inputs(
    kind: NeuronKind, inputs: list[gs.Tensor]
) -> tuple[dict[str, gs.Tensor], dict[str, gs.Tensor]]:
    """A site node's inputs ``(z, *parameters, *initial states)`` as (parameters, initial states)."""
    rest = inputs[1:]
    count = len(kind.parameters)
    return dict(zip(kind.parameters, rest[:count], strict=True)), dict(
        zip(kind.states, rest[count:], strict=True)
    )
