"""MaxPool between spiking layers (``--maxpool``).

A max over a window is not affine, so a MaxPool with neurons downstream needs a spiking
policy. A MaxPool with no neuron downstream is part of the head and runs once on the read-out,
exactly; it is left alone.

- ``decompose`` (exact as T grows): ``max(a, b) = a + ReLU(b − a)``, applied as a balanced tree
  over the k window elements (each a strided ``Slice``); every ``ReLU(b − a)`` becomes an IF
  neuron site like any other, so the pooled rate converges to the max of the rates. Costs
  ⌈log2 k⌉ extra neuron layers of latency (2 for a 2×2 window). Padding is exact only for an
  input proven non-negative (:mod:`.sign`: a neuron's output, a Concat or MaxPool of such, …),
  where the pad value 0 never wins.
- ``gate``: the MaxPool stays; per step each window forwards the current spikes of the unit
  with the highest input accumulated so far (the unrolled graph keeps the accumulator as state
  and uses MaxPool's ``Indices``). The winner settles on the highest-rate unit as T grows.
- ``avg``: replaced by an AveragePool of the same window (an approximation of the ANN).

A GlobalMaxPool between neurons is first written as the MaxPool of one window over its whole
(static) map, then follows the policy like any MaxPool. Where the policy cannot apply (a padded
MaxPool of a signed input under ``decompose``, SPPF's 5×5 pools after SiLU; a window the lowering
does not take), the MaxPool is compensated instead (:mod:`.compensate`): the max of the mean
inputs, dense and exact at every step.

The ANN graph after this pass still runs in ONNX Runtime (calibration relies on it): decompose
rewrites into plain ops; gate keeps the MaxPool and is realized only by the unroll pass.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.ops.windows import SAME, auto_pad, resolve_pads
from icsnn_onnx.options import MaxPoolPolicy
from icsnn_onnx.passes import Pass, PassResult, ensure
from icsnn_onnx.passes.graph_utils import detach, static_dims
from icsnn_onnx.passes.program import ActivationKind, ActivationSite, Program, TransferFunction
from icsnn_onnx.passes.sign import nonnegative_tensors
from icsnn_onnx.passes.temporal import analyze_program

logger = logging.getLogger(__name__)

#: A MaxPool between neurons no policy could rewrite: a compensated unit (docs/method.md §15).
COMPENSATED = "compensated"
#: The largest window decompose rewrites: a 5×5 pool already costs 24 neuron sites in 5 layers of
#: latency; a global max over a long sequence would cost hundreds (it is compensated instead).
DECOMPOSE_MAX_WINDOW = 25


class LowerMaxPool(Pass):
    """MaxPools between neurons under ``program.options.maxpool`` (see the module docstring)."""

    def ensures(self, program: Program) -> None:
        by_name = {n.name: n for n in program.graph.nodes}
        for name, policy in program.maxpools.items():
            if policy in (MaxPoolPolicy.DECOMPOSE, MaxPoolPolicy.AVG):
                left = name in by_name and by_name[name].op == "MaxPool"
                ensure(not left, self.name, f"{name} should have been rewritten ({policy})")

    def call(self, program: Program) -> PassResult:
        policy = program.options.maxpool
        _, blocked = analyze_program(program)  # no gate yet: this pass decides them
        blocked_names = {b.name for b in blocked}
        nonnegative = nonnegative_tensors(
            program.graph, {s.output for s in program.sites.values() if s.transfer.nonnegative}
        )
        modified = False
        for node in list(program.graph.nodes):
            if node.op not in ("MaxPool", "GlobalMaxPool"):
                continue
            if node.name not in blocked_names:
                program.maxpools[node.name] = "read-out"  # no neuron downstream: exact, once
                continue
            reason = _unsupported(node) if node.op == "MaxPool" else _to_window(node)
            if reason is None and policy is MaxPoolPolicy.DECOMPOSE:
                reason = self._decompose(program, node, nonnegative=node.inputs[0].name in nonnegative)
            elif reason is None and policy is MaxPoolPolicy.AVG:
                _to_average_pool(node)
            if reason is not None:  # compensated instead (the max of the mean inputs: dense, exact)
                logger.info(
                    "%s: MaxPool policy %s not applicable (%s); compensated", node.name, policy, reason
                )
                program.rejected[node.name] = f"MaxPool policy {policy}: {reason}"
                program.maxpools[node.name] = COMPENSATED
                continue
            program.maxpools[node.name] = str(policy)
            modified = True
        if modified:
            program.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(program, modified)

    def _decompose(self, program: Program, node: gs.Node, nonnegative: bool) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        if x.shape is None or not static_dims(x.shape[2:]):
            return "the decomposition needs the input's spatial dimensions fixed"
        window = _window(node, list(x.shape[2:]))
        if isinstance(window, str):
            return window
        kernel, strides, dilations, pads, out_dims = window
        if math.prod(kernel) > DECOMPOSE_MAX_WINDOW:
            return (
                f"a window of {math.prod(kernel)} elements would take {math.prod(kernel) - 1} neuron sites in "
                f"{math.ceil(math.log2(math.prod(kernel)))} layers (decompose takes up to {DECOMPOSE_MAX_WINDOW})"
            )
        graph, prefix = program.graph, node.name
        source = x
        if any(pads):
            if not nonnegative:
                return (
                    "padding is exact only for an input proven non-negative (built from neuron "
                    "outputs by sign-keeping ops); try --maxpool gate"
                )
            spatial = len(kernel)
            begin, end = pads[:spatial], pads[spatial:]
            padded_shape = [
                *x.shape[:2],
                *(d + b + e for d, b, e in zip(x.shape[2:], begin, end, strict=True)),
            ]
            source = gs.Variable(f"{prefix}.padded", x.dtype, padded_shape)
            full = np.array([0, 0, *begin, 0, 0, *end], np.int64)
            graph.nodes.append(
                gs.Node(
                    "Pad", f"{prefix}.pad", inputs=[x, gs.Constant(f"{prefix}.pads", full)], outputs=[source]
                )
            )
        out_shape = [*x.shape[:2], *out_dims]
        axes = gs.Constant(f"{prefix}.axes", np.arange(2, 2 + len(kernel), dtype=np.int64))
        steps = gs.Constant(f"{prefix}.steps", np.asarray(strides, np.int64))
        elements: list[gs.Tensor] = []
        for offset in itertools.product(*(range(k) for k in kernel)):
            starts = np.array([o * d for o, d in zip(offset, dilations, strict=True)], np.int64)
            ends = starts + np.array(
                [(n - 1) * s + 1 for n, s in zip(out_dims, strides, strict=True)], np.int64
            )
            tag = "_".join(map(str, offset))
            e = gs.Variable(f"{prefix}.window_{tag}", x.dtype, out_shape)
            graph.nodes.append(
                gs.Node(
                    "Slice",
                    f"{prefix}.window_{tag}",
                    inputs=[
                        source,
                        gs.Constant(f"{prefix}.starts_{tag}", starts),
                        gs.Constant(f"{prefix}.ends_{tag}", ends),
                        axes,
                        steps,
                    ],
                    outputs=[e],
                )
            )
            elements.append(e)
        level = 0
        while len(elements) > 1:
            level += 1
            merged = []
            for i in range(0, len(elements) - 1, 2):
                a, b = elements[i], elements[i + 1]
                tag = f"{level}_{i // 2}"
                last = len(elements) == 2
                merged.append(
                    self._max_of_two(program, f"{prefix}.max_{tag}", a, b, y if last else None, out_shape)
                )
            if len(elements) % 2:
                merged.append(elements[-1])
            elements = merged
        detach(node)
        return None

    @staticmethod
    def _max_of_two(
        program: Program, name: str, a: gs.Tensor, b: gs.Tensor, out: gs.Tensor | None, shape: list
    ) -> gs.Tensor:
        """``a + ReLU(b − a)``; the ReLU becomes an activation site (an IF neuron later)."""
        diff = gs.Variable(f"{name}.diff", a.dtype, shape)
        excess = gs.Variable(f"{name}.excess", a.dtype, shape)
        result = out if out is not None else gs.Variable(name, a.dtype, shape)
        graph = program.graph
        graph.nodes.append(gs.Node("Sub", f"{name}.sub", inputs=[b, a], outputs=[diff]))
        graph.nodes.append(gs.Node("Relu", f"{name}.relu", inputs=[diff], outputs=[excess]))
        graph.nodes.append(gs.Node("Add", f"{name}.add", inputs=[a, excess], outputs=[result]))
        site = ActivationSite(
            f"{name}.relu", diff.name, excess.name, (f"{name}.relu",), TransferFunction(ActivationKind.RELU)
        )
        program.sites[site.name] = site
        return result


def _to_window(node: gs.Node) -> str | None:
    """A GlobalMaxPool as the MaxPool of one window over the whole (static) map."""
    x = node.inputs[0]
    if x.shape is None or not static_dims(x.shape[2:]):
        return "a global max over a map of unknown size (the spatial dimensions must be static)"
    node.op, node.attrs = "MaxPool", {"kernel_shape": list(x.shape[2:])}
    return None


def _unsupported(node: gs.Node) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return "its Indices output is used"
    if node.attrs.get("storage_order", 0) != 0:
        return "column-major indices (storage_order=1)"
    return None


def _window(
    node: gs.Node, dims: list[int]
) -> tuple[list[int], list[int], list[int], list[int], list[int]] | str:
    """Kernel, strides, dilations, total pads (begin…, end…, ceil_mode included) and output dims."""
    kernel = list(node.attrs["kernel_shape"])
    n = len(kernel)
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    pads = resolve_pads(node.attrs, dims, kernel, strides, dilations)
    if auto_pad(node.attrs) in SAME:
        return (
            kernel,
            strides,
            dilations,
            pads,
            [math.ceil(d / s) for d, s in zip(dims, strides, strict=True)],
        )
    ceil_mode = bool(node.attrs.get("ceil_mode", 0))
    out_dims, extra = [], []
    for i, (d, k, s, dl) in enumerate(zip(dims, kernel, strides, dilations, strict=True)):
        span = d + pads[i] + pads[n + i] - dl * (k - 1) - 1
        if span < 0:
            return "the window is larger than the padded input"
        o = (math.ceil(span / s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= d + pads[i]:
            o -= 1  # the last window must start inside the input or its left padding
        out_dims.append(o)
        extra.append(max((o - 1) * s + dl * (k - 1) + 1 - (d + pads[i] + pads[n + i]), 0))
    return (
        kernel,
        strides,
        dilations,
        pads[:n] + [p + e for p, e in zip(pads[n:], extra, strict=True)],
        out_dims,
    )


def _to_average_pool(node: gs.Node) -> None:
    attrs = {
        k: v
        for k, v in node.attrs.items()
        if k in ("kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", "dilations")
    }
    attrs["count_include_pad"] = 0
    node.op, node.attrs = "AveragePool", attrs
    while len(node.outputs) > 1:  # graphsurgeon lists take no slice deletion
        node.outputs.pop()
