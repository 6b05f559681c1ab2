"""Compensated units, step by step: each runs on the running means of its time-varying inputs and
emits the change of ``t·g(means)`` (docs/method.md §15), in each layout's form.

At step t, for every time-varying input ``x`` and every output ``o`` read outside the unit::

    x̄_t   = (Σ_{k≤t} x(k)) / t              (step 1: x(1))
    g_t   = the unit's nodes on the means     (nodes named ``node.ecm@t``, outputs ``o.ecm@t``)
    o(t)  = t·g_t − (t−1)·g_{t−1}             (step 1: g_1)

so that ``Σ_{k≤t} o(k) / t = g_t``: the mean the rest of the network sees after t steps is the
unit's function of the means it received, exactly, at every t.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.contract import stacked_name, step_name
from icsnn_onnx.passes.unroll.builder import Builder, UnitWiring

#: What a unit's per-step clones are named after: ``node.ecm@t`` (``node.ecm@T`` when stacked).
ECM = ".ecm"


def _dtype(tensor: gs.Tensor) -> np.dtype:
    return np.dtype(tensor.dtype or np.float32)


class CompensatedSteps(Builder):
    def _unit_clones(
        self,
        unit: UnitWiring,
        source: Callable[[gs.Tensor], gs.Tensor],
        suffix: str,
        shape: Callable = lambda s: s,
    ) -> dict[str, gs.Tensor]:
        """Emit the unit's nodes once, each input mapped by ``source`` (a mean, another clone of
        this pass, or the tensor itself); return every output's clone by the original's name."""
        clones: dict[str, gs.Tensor] = {}
        implicit = {t.name: t for t in unit.inputs}
        for node, inputs, outputs in unit.nodes:
            mapped = [clones.get(t.name) or source(t) for t in inputs]
            # a subgraph's reads of time-varying tensors around it become their means too
            outer = {name: clones.get(name) or source(t) for name, t in implicit.items()}
            made = self._clone(node, mapped, outputs, suffix, shape, outer)
            clones.update({o.name: c for o, c in zip(outputs, made, strict=True)})
        return clones

    def _running_means(self) -> dict:
        """The running sums and means already emitted, by name: a tensor read by several units
        gets one of each per step."""
        if not hasattr(self, "_ecm_running"):
            self._ecm_running: dict = {}
        return self._ecm_running

    def _unit_step(
        self,
        unit: UnitWiring,
        t: int,
        at: Callable[[gs.Tensor], gs.Tensor],
        sums: dict[str, gs.Tensor],
        scaled: dict[str, gs.Tensor],
        name: Callable[[str], str],
        clock: Callable[[np.dtype], gs.Tensor] | None = None,
        inverse: Callable[[np.dtype], gs.Tensor] | None = None,
    ) -> dict[str, gs.Tensor]:
        """One step of a unit (``t`` = 1, a later step of an unrolled layout, or ``t`` = 0 for the
        loop body, whose step number in a float type is ``clock(dtype)`` and its reciprocal
        ``inverse(dtype)``): ``at`` gives an input's value this step; ``sums`` and ``scaled``
        carry Σx and t·g from the step before and are updated. Returns each output's value this
        step, o(t)."""
        means: dict[str, gs.Tensor] = {}
        shared = self._running_means()
        for x in unit.inputs:
            value = at(x)
            if t == 1:
                sums[x.name] = means[x.name] = value
                continue
            key = name(f"{x.name}.ecm_sum")
            if key in shared:  # another unit reads x too: its running mean, once
                sums[x.name], means[x.name] = shared[key]
                continue
            dtype = _dtype(x)
            total = gs.Variable(name(f"{x.name}.ecm_sum"), x.dtype, x.shape)
            self._add("Add", name(f"{x.name}.ecm_sum"), [sums[x.name], value], [total])
            inv = (
                inverse(dtype)
                if t == 0
                else self._const(step_name(f"icsnn.inverse_step.{dtype}", t), 1.0 / t, dtype)
            )
            mean = gs.Variable(name(f"{x.name}.ecm_mean"), x.dtype, x.shape)
            self._add("Mul", name(f"{x.name}.ecm_mean"), [total, inv], [mean])
            sums[x.name], means[x.name] = shared[key] = total, mean
        clones = self._unit_clones(unit, lambda s: means.get(s.name) or at(s), name(ECM))
        values: dict[str, gs.Tensor] = {}
        for o in unit.outputs:
            g = clones[o.name]
            if t == 1:  # t·g − 0: the clone itself, named as the step's value of o
                g.name = name(o.name)
                scaled[o.name] = values[o.name] = g
                continue
            dtype = _dtype(o)
            count = clock(dtype) if t == 0 else self._const(f"icsnn.step_{t}.{dtype}", float(t), dtype)
            now = gs.Variable(name(f"{o.name}.ecm_scaled"), o.dtype, o.shape)
            self._add("Mul", name(f"{o.name}.ecm_scaled"), [g, count], [now])
            delta = gs.Variable(name(o.name), o.dtype, o.shape)
            self._add("Sub", name(f"{o.name}.ecm_delta"), [now, scaled[o.name]], [delta])
            scaled[o.name], values[o.name] = now, delta
        return values

    def _unit_unrolled(
        self, unit: UnitWiring, at: Callable[[gs.Tensor, int], gs.Tensor]
    ) -> dict[tuple[str, int], gs.Tensor]:
        """All T steps of a unit, unrolled (the step-major layout): output values by (name, t)."""
        sums: dict[str, gs.Tensor] = {}
        scaled: dict[str, gs.Tensor] = {}
        found: dict[tuple[str, int], gs.Tensor] = {}
        for t in range(1, self.T + 1):
            values = self._unit_step(
                unit, t, lambda x, t=t: at(x, t), sums, scaled, lambda base, t=t: step_name(base, t)
            )
            found.update({(o, t): v for o, v in values.items()})
        return found

    def _unit_stacked(
        self, unit: UnitWiring, stacked: Callable[[gs.Tensor], gs.Tensor], shape: Callable
    ) -> dict[str, gs.Tensor]:
        """A unit on all T steps stacked on the batch axis (the time-batched layout): each input's
        running means by a CumSum over the steps, the nodes once on ``[T·N, …]``, each output's
        changes of t·g by a shifted difference. Returns each output's stacked values."""
        means: dict[str, gs.Tensor] = {}
        shared = self._running_means()
        for x in unit.inputs:
            if stacked_name(f"{x.name}.ecm_mean") in shared:  # read by another unit too: once
                means[x.name] = shared[stacked_name(f"{x.name}.ecm_mean")]
                continue
            rest = list(x.shape[1:])
            by_step = self._by_step(stacked(x), x, rest, "ecm_by_step")
            sums = gs.Variable(stacked_name(f"{x.name}.ecm_sum"), x.dtype, [self.T, None, *rest])
            self._add(
                "CumSum", stacked_name(f"{x.name}.ecm_sum"), [by_step, self._const("icsnn.axis0", 0)], [sums]
            )
            inverse = self._per_step(
                f"icsnn.inverse_steps.{_dtype(x)}.{len(rest)}", 1.0 / np.arange(1, self.T + 1), x, rest
            )
            mean = gs.Variable(stacked_name(f"{x.name}.ecm_mean_by_step"), x.dtype, [self.T, None, *rest])
            self._add("Mul", stacked_name(f"{x.name}.ecm_mean_by_step"), [sums, inverse], [mean])
            means[x.name] = self._flat(mean, x, rest, stacked_name(f"{x.name}.ecm_mean"))
            shared[stacked_name(f"{x.name}.ecm_mean")] = means[x.name]
        clones = self._unit_clones(unit, lambda s: means.get(s.name) or stacked(s), stacked_name(ECM), shape)
        values: dict[str, gs.Tensor] = {}
        for o in unit.outputs:
            rest = list(o.shape[1:])
            by_step = self._by_step(clones[o.name], o, rest, "ecm_value_by_step")
            counts = self._per_step(f"icsnn.steps.{_dtype(o)}.{len(rest)}", np.arange(1, self.T + 1), o, rest)
            now = gs.Variable(stacked_name(f"{o.name}.ecm_scaled"), o.dtype, [self.T, None, *rest])
            self._add("Mul", stacked_name(f"{o.name}.ecm_scaled"), [by_step, counts], [now])
            before = gs.Variable(stacked_name(f"{o.name}.ecm_before"), o.dtype, [self.T, None, *rest])
            self._add(  # t·g of the step before: the steps shifted down by one, 0 before step 1
                "Pad",
                stacked_name(f"{o.name}.ecm_before"),
                [
                    self._sliced_last(now, o, rest),
                    # [T, N, …] is of rank 2 + len(rest): one row of zeros before axis 0's start
                    self._const(f"icsnn.shift_pads.{len(rest)}", [1] + [0] * (2 * len(rest) + 3)),
                ],
                [before],
            )
            delta = gs.Variable(stacked_name(f"{o.name}.ecm_delta"), o.dtype, [self.T, None, *rest])
            self._add("Sub", stacked_name(f"{o.name}.ecm_delta"), [now, before], [delta])
            values[o.name] = self._flat(delta, o, rest, stacked_name(o.name))
        return values

    def _by_step(self, stacked: gs.Tensor, like: gs.Tensor, rest: list, role: str) -> gs.Tensor:
        """``[T·N, …]`` viewed as ``[T, N, …]``."""
        out = gs.Variable(stacked_name(f"{like.name}.{role}"), like.dtype, [self.T, None, *rest])
        shape = self._const(
            f"icsnn.by_step_shape.{'x'.join(map(str, rest)) or 'scalar'}", [self.T, -1, *rest]
        )
        self._add("Reshape", stacked_name(f"{like.name}.{role}"), [stacked, shape], [out])
        return out

    def _flat(self, by_step: gs.Tensor, like: gs.Tensor, rest: list, name: str) -> gs.Tensor:
        """``[T, N, …]`` back to ``[T·N, …]``, named ``name``."""
        out = gs.Variable(name, like.dtype, [None, *rest])
        shape = self._const(f"icsnn.flat_shape.{'x'.join(map(str, rest)) or 'scalar'}", [-1, *rest])
        self._add("Reshape", name, [by_step, shape], [out])
        return out

    def _per_step(self, name: str, values: np.ndarray, like: gs.Tensor, rest: list) -> gs.Constant:
        """A constant ``[T, 1, 1, …]`` (one value per step) broadcasting over ``[T, N, …]``."""
        return self._const(name, np.asarray(values).reshape(self.T, *([1] * (len(rest) + 1))), _dtype(like))

    def _sliced_last(self, by_step: gs.Tensor, like: gs.Tensor, rest: list) -> gs.Tensor:
        """Steps 1…T−1 of ``[T, N, …]``."""
        out = gs.Variable(stacked_name(f"{like.name}.ecm_head"), like.dtype, [self.T - 1, None, *rest])
        self._add(
            "Slice",
            stacked_name(f"{like.name}.ecm_head"),
            [
                by_step,
                self._const("icsnn.zero1", [0]),
                self._const("icsnn.steps_but_last", [self.T - 1]),
                self._const("icsnn.axes0", [0]),
            ],
            [out],
        )
        return out
