"""Lower an SNN's synaptic graph to NIR nodes, every scale folded into weights.

A value is ``(sources, scale)``: the sum of the NIR sources' outputs (fan-in) times ``scale``
(broadcast over the per-sample shape) is the SNN's tensor. A site's spikes are its ``IF`` node
with scale θ (icsnn's neuron outputs θ·s, NIR's outputs s); the graph input has scale 1. A
Conv/Affine takes any per-channel scale on its input into its weights and writes any per-channel
scale asked of its output, so θ costs nothing where a synaptic layer follows. A scale that cannot
fold (into an IF's input, a fan-in whose branches differ, the output) becomes a depthwise 1×1
convolution or a diagonal affine map: NIR's ``Scale`` node is not read by every consumer
(sinabs 3.1 reads neither it nor ``AvgPool2d``). docs/method.md §12 derives each rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
import onnx

from icsnn_onnx.contract import base_name
from icsnn_onnx.errors import UnsupportedNode
from icsnn_onnx.export.options import NirOptions
from icsnn_onnx.export.synaptic import GraphInput, Spikes, SynapticGraph, as_array
from icsnn_onnx.runtime.instrument import NeuronLayer

Value = tuple[list[str], np.ndarray]
Handler = Callable[["Lowering", onnx.NodeProto, str, "np.ndarray | None"], Value]

#: One rule per ONNX op the exporter reads between neurons and in the head.
RULES: dict[str, Handler] = {}


def rule(*ops: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for op in ops:
            if op in RULES:
                raise ValueError(f"two export rules for {op}")
            RULES[op] = fn
        return fn

    return register


_GATE = "a MaxPool gate (spiking max) has no NIR form: convert with --maxpool decompose"
_HEAD_MAX = (
    "a MaxPool after the last neurons acts once on the read-out; NIR would apply it at every step "
    "(a mean of maxima is not the maximum of means): use an average pool there"
)
_REASONS = {"Gather": _GATE, "GatherElements": _GATE, "MaxPool": _HEAD_MAX, "GlobalMaxPool": _HEAD_MAX}


class Lowering:
    """Builds the NIR nodes and edges of one SNN; collects every problem before failing."""

    def __init__(self, graph: SynapticGraph, options: NirOptions, nir: ModuleType) -> None:
        self.g, self.options, self.nir = graph, options, nir
        self.nodes: dict[str, object] = {}
        self.edges: list[tuple[str, str]] = []
        self.problems: list[UnsupportedNode] = []
        self._memo: dict[tuple, Value] = {}
        self._built: dict[str, str] = {}  # site or graph input → its IF or Input node
        self._names: set[str] = set()

    # -- values --------------------------------------------------------------------------------

    def exact(self, tensor: str, want: np.ndarray, *, fresh: bool = False) -> list[str]:
        """Sources whose sum is ``tensor / want``."""
        return self.value(tensor, want, fresh=fresh)[0]

    def value(self, tensor: str, hint: np.ndarray | None = None, *, fresh: bool = False) -> Value:
        """``tensor`` as (sources, scale); the scale is ``hint`` when one is given."""
        key = (tensor, None if hint is None else (hint.shape, hint.tobytes()))
        if not fresh and key in self._memo:
            return self._memo[key]
        shape = self.g.shape(tensor)
        sources, scale = self._natural(tensor, hint)
        if hint is not None and not _same(scale, hint, shape):
            sources = self.affine_map(sources, np.broadcast_to(scale / hint, shape), shape, None, tensor)
            scale = hint
        if not fresh:
            self._memo[key] = (sources, scale)
        return sources, scale

    def _natural(self, tensor: str, hint: np.ndarray | None) -> Value:
        origin = self.g.origin(tensor)
        if isinstance(origin, GraphInput):
            return [self.input_node(origin.name)], np.ones(())
        if isinstance(origin, Spikes):
            return [self.neuron(origin.layer)], _site_array(origin.layer.threshold, self.g.shape(tensor))
        node = origin.node
        handler = RULES.get(node.op_type)
        if handler is None:
            why = _REASONS.get(node.op_type, "not a linear synaptic op NIR can express")
            for x in node.input:  # walk on: every offending node is reported at once
                if x and x not in self.g.constants:
                    self.value(x)
            return self.problem(node, why, tensor)
        return handler(self, node, tensor, hint)

    def problem(self, node: onnx.NodeProto, reason: str, tensor: str = "") -> Value:
        """Record why ``node`` cannot be exported; a placeholder value lets the walk go on."""
        if not any(p.name == node.name and p.reason == reason for p in self.problems):
            self.problems.append(UnsupportedNode(node.name, node.op_type, reason, tensor))
        return [], np.ones(())

    # -- nodes ---------------------------------------------------------------------------------

    def add(self, name: str, node: object, sources: list[str]) -> str:
        name = self._unique(name)
        self.nodes[name] = node
        self.edges.extend((src, name) for src in sources)
        return name

    def neuron(self, layer: NeuronLayer) -> str:
        """The IF node of ``layer`` (built once): input current ÷ c, threshold θ/c, where c = θ
        for unit thresholds and 1 otherwise; v(0) as a bias v(0)/T on the current."""
        if layer.name in self._built:
            return self._built[layer.name]
        shape = self.g.shape(layer.outputs[0])
        kind = layer.kind
        if kind.nir != "IF" or layer.threshold is None:
            self.problems.append(UnsupportedNode(layer.name, kind.op_type, kind.nir_refusal))
            self._built[layer.name] = ""
            return ""
        theta = _site_array(layer.threshold, shape)
        unit = self.options.thresholds == "unit"
        c = theta if unit else np.ones(())
        sources = self.exact(layer.currents[0], c, fresh=True)
        v0 = self.g.constants.get(layer.v_init)
        if v0 is None:
            self.problems.append(UnsupportedNode(layer.name, "IFNeuron", "its v(0) is not a constant"))
        elif self.options.initial_potential == "bias" and np.any(v0 != 0):
            bias = _site_array(v0, shape) / layer.T / c
            sources = self.add_bias(sources, bias, shape, layer.name)
        full = np.broadcast_to(theta / c, shape).astype(np.float32)
        node = self.nir.IF(**_if_fields(self.nir, np.ones(shape, np.float32), full.copy()))
        self._built[layer.name] = self.add(layer.name, node, sources)
        return self._built[layer.name]

    def affine_map(
        self,
        sources: list[str],
        factor: np.ndarray,
        shape: tuple[int, ...],
        bias: np.ndarray | None,
        tensor: str,
    ) -> list[str]:
        """A node computing ``factor ⊙ Σ sources + bias``: depthwise 1×1 conv on (C, H, W),
        diagonal affine on (F,)."""
        factor = np.broadcast_to(factor, shape)
        if len(shape) == 3:
            vector = _channel_vector(factor, shape)
            if vector is None:
                self.problems.append(
                    UnsupportedNode(tensor, "scale", "a per-neuron scale on a feature map has no NIR form")
                )
                return []
            b = np.zeros(shape[0]) if bias is None else _channel_vector(np.broadcast_to(bias, shape), shape)
            node = self.conv(vector.reshape(-1, 1, 1, 1), b, (1, 1), (0, 0), (1, 1), shape[0], shape[1:])
        elif len(shape) == 1:
            b = np.zeros(shape) if bias is None else np.broadcast_to(bias, shape)
            node = self.nir.Affine(weight=np.diag(factor).astype(np.float32), bias=_f32(b))
        else:
            self.problems.append(
                UnsupportedNode(tensor, "scale", f"rank-{len(shape)} values have no NIR form here")
            )
            return []
        return [self.add(f"{tensor}_scale", node, sources)]

    def add_bias(
        self, sources: list[str], bias: np.ndarray, shape: tuple[int, ...], tensor: str
    ) -> list[str]:
        """``Σ sources + bias``: into the bias of a node made for this value alone, else a new node."""
        bias = np.broadcast_to(bias, shape)
        if len(sources) == 1 and self._private(sources[0]):
            node = self.nodes[sources[0]]
            per = _channel_vector(bias, shape) if len(shape) == 3 else bias
            if per is not None and node.bias.shape == per.shape:
                node.bias = _f32(as_array(node.bias) + per)
                return sources
        return self.affine_map(sources, np.ones(shape), shape, bias, tensor)

    def _private(self, name: str) -> bool:
        """Whether node ``name`` has a bias and nothing reads it yet, nor can (not memoized)."""
        return (
            hasattr(self.nodes[name], "bias")
            and not any(src == name for src, _ in self.edges)
            and not any(name in sources for sources, _ in self._memo.values())
        )

    def conv(
        self,
        weight: np.ndarray,
        bias: np.ndarray,
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        groups: int,
        spatial: Sequence[int],
    ) -> object:
        """A ``nir.Conv2d``; grouped ones written dense (block-diagonal) unless the options keep
        groups (sinabs 3.1 imports a grouped convolution with the wrong input channel count)."""
        weight = np.asarray(weight)
        if groups > 1 and self.options.groups == "dense":
            cout, cin = weight.shape[:2]
            dense = np.zeros((cout, cin * groups, *weight.shape[2:]))
            for o in range(cout):
                g = o // (cout // groups)
                dense[o, g * cin : (g + 1) * cin] = weight[o]
            weight, groups = dense, 1
        return self.nir.Conv2d(
            input_shape=tuple(int(d) for d in spatial),
            weight=_f32(weight),
            stride=tuple(int(s) for s in stride),
            padding=tuple(int(p) for p in padding),
            dilation=tuple(int(d) for d in dilation),
            groups=int(groups),
            bias=_f32(bias),
        )

    def input_node(self, name: str) -> str:
        if name not in self._built:
            shape = np.array(self.g.shape(name))
            self._built[name] = self.add(name, self.nir.Input(input_type={"input": shape}), [])
        return self._built[name]

    def _unique(self, name: str) -> str:
        base = re.sub(r"[^0-9A-Za-z_]+", "_", base_name(name)).strip("_") or "node"
        base = base if not base[0].isdigit() else f"n{base}"
        unique, k = base, 1
        while unique in self._names:
            k += 1
            unique = f"{base}_{k}"
        self._names.add(unique)
        return unique

    # -- helpers for rules ---------------------------------------------------------------------

    def constant(self, name: str) -> np.ndarray | None:
        return as_array(self.g.constants[name]) if name in self.g.constants else None

    def channel_input(self, tensor: str) -> tuple[list[str], np.ndarray]:
        """``tensor`` (C, …) with a per-channel scale vector (materialized if it is not one)."""
        shape = self.g.shape(tensor)
        sources, scale = self.value(tensor)
        vector = _channel_vector(np.broadcast_to(scale, shape), shape)
        if vector is None:
            sources, vector = self.exact(tensor, np.ones(())), np.ones(shape[0])
        return sources, vector


def _same(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> bool:
    return np.array_equal(np.broadcast_to(a, shape), np.broadcast_to(b, shape))


def _channel_vector(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """The per-channel vector of ``values`` (shape ``shape``), or None if it varies within one."""
    full = np.broadcast_to(values, shape).reshape(shape[0], -1)
    return full[:, 0].copy() if np.all(full == full[:, :1]) else None


def _site_array(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """θ or v(0) of a site, broadcastable to its per-sample shape (a leading batch axis dropped)."""
    value = as_array(value)
    if value.ndim == len(shape) + 1 and value.shape[0] == 1:
        value = value[0]
    return value


def _f32(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=np.float32)


def _if_fields(nir: ModuleType, r: np.ndarray, threshold: np.ndarray) -> dict[str, np.ndarray]:
    """``nir.IF``'s fields; NIR ≥ 1.0.6 adds ``v_reset`` (reset to a value, which icsnn's IF does
    not do: the export warns), written as 0."""
    fields = {"r": r, "v_threshold": threshold}
    if "v_reset" in getattr(nir.IF, "__dataclass_fields__", {}):
        fields["v_reset"] = np.zeros_like(r)
    return fields
