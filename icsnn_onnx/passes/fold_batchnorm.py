"""Fold inference BatchNormalization into the preceding linear layer.

BN computes ``y = a·x + b`` per channel (axis 1) with ``a = γ/√(σ² + ε)`` and ``b = β - μ·a``.
When ``x`` comes only from a Conv, ConvTranspose, Gemm or MatMul with constant weights (with
or without a following constant bias ``Add``), ``a`` scales that layer's output channels and
``b`` joins its bias. A BN with no such producer (e.g. pre-activation blocks) becomes the
per-channel affine ``Mul`` + ``Add``: it is linear, so it stays between neurons unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from icsnn_onnx.errors import ConversionError
from icsnn_onnx.passes import Pass, PassResult, ensure
from icsnn_onnx.passes.graph_utils import (
    channel_shape,
    constant_value,
    detach,
    is_empty,
    producer,
    sole_consumer,
    tensor_rank,
)
from icsnn_onnx.passes.program import Program


class FoldBatchNorm(Pass):
    def call(self, program: Program) -> PassResult:
        graph = program.graph
        batchnorms = [n for n in graph.nodes if n.op == "BatchNormalization"]
        for bn in batchnorms:
            scale, shift = self._affine(bn)
            if not self._fold(graph, bn, scale, shift):
                self._to_affine(graph, bn, scale, shift)
        if batchnorms:
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(program, bool(batchnorms))

    def ensures(self, program: Program) -> None:
        left = [n.name for n in program.graph.nodes if n.op == "BatchNormalization"]
        ensure(not left, self.name, f"BatchNormalization left: {left}")

    @staticmethod
    def _affine(bn: gs.Node) -> tuple[np.ndarray, np.ndarray]:
        if bn.attrs.get("training_mode", 0):
            raise ConversionError(f"{bn.name} (BatchNormalization): training mode cannot be converted")
        params = [constant_value(t) for t in bn.inputs[1:5]]
        if any(p is None for p in params):
            raise ConversionError(
                f"{bn.name} (BatchNormalization): scale, bias, mean and variance must be constants"
            )
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        return scale, beta - mean * scale

    def _fold(self, graph: gs.Graph, bn: gs.Node, a: np.ndarray, b: np.ndarray) -> bool:
        x = bn.inputs[0]
        layer = producer(x)
        if layer is None or sole_consumer(graph, x) is not bn:
            return False
        bias_add: tuple[gs.Node, int] | None = None
        if layer.op == "Add":  # MatMul + Add (or Conv + Add) exported as two nodes
            consts = [i for i, t in enumerate(layer.inputs) if isinstance(t, gs.Constant)]
            if len(consts) != 1:
                return False
            inner = layer.inputs[1 - consts[0]]
            bias_add, layer = (layer, consts[0]), producer(inner)
            if layer is None or sole_consumer(graph, inner) is not bias_add[0]:
                return False
        rank = tensor_rank(x)
        if (bias_add is not None and rank is None) or not self._foldable(layer, rank):
            return False
        dtype = np.asarray(layer.inputs[1].values).dtype
        self._scale_weights(layer, a)
        if bias_add is None:
            last = self._absorb_bias(graph, layer, a, b, dtype)
        else:
            if layer.op != "MatMul":
                self._absorb_bias(graph, layer, a, np.zeros_like(b), dtype)
            add, k = bias_add
            c = np.asarray(add.inputs[k].values, dtype=np.float64)
            folded = c * _as_channels(a, rank) + _as_channels(b, rank)
            add.inputs[k] = gs.Constant(f"{add.name}__bn_bias", _cast(folded, dtype))
            last = add
        y = bn.outputs[0]  # the layer now produces BN's output directly
        detach(bn)
        last.outputs[0] = y
        return True

    @staticmethod
    def _foldable(layer: gs.Node, rank: int | None) -> bool:
        if layer.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            return False
        if len(layer.inputs) < 2 or not isinstance(layer.inputs[1], gs.Constant):
            return False
        if layer.op == "MatMul":
            # BN's channel axis 1 is MatMul's last axis only for 2-D outputs.
            return rank == 2 and np.asarray(layer.inputs[1].values).ndim == 2
        bias = layer.inputs[2] if len(layer.inputs) > 2 else None
        return bias is None or is_empty(bias) or isinstance(bias, gs.Constant)

    @staticmethod
    def _scale_weights(layer: gs.Node, a: np.ndarray) -> None:
        """Scale the output channels of a layer that :meth:`_foldable` accepted."""
        w = np.asarray(layer.inputs[1].values)
        if layer.op == "Conv":
            scaled = w * a.reshape([-1] + [1] * (w.ndim - 1))
        elif layer.op == "ConvTranspose":
            groups = int(layer.attrs.get("group", 1))
            per_group = w.shape[1]
            grouped = w.reshape(groups, w.shape[0] // groups, per_group, *w.shape[2:])
            scaled = (grouped * a.reshape(groups, 1, per_group, *[1] * (w.ndim - 2))).reshape(w.shape)
        elif layer.op == "Gemm":
            if layer.attrs.get("transB", 0):
                scaled = w * a[:, None]
            else:
                scaled = w * a[None, :]
        else:  # MatMul with a 2-D weight
            scaled = w * a[None, :]
        layer.inputs[1] = gs.Constant(f"{layer.name}__bn_weight", _cast(scaled, w.dtype))

    @staticmethod
    def _absorb_bias(
        graph: gs.Graph, layer: gs.Node, a: np.ndarray, b: np.ndarray, dtype: np.dtype
    ) -> gs.Node:
        """Set the layer's bias to ``a·c + b`` (``c`` its old bias; BN's ``a`` scales it too).

        Returns the node that now produces the layer's output.
        """
        if layer.op == "MatMul":  # no bias slot: BN's shift becomes an Add after it
            out = layer.outputs[0]
            mid = gs.Variable(f"{out.name}__bn_matmul", out.dtype, out.shape)
            layer.outputs[0] = mid
            bias = gs.Constant(f"{layer.name}__bn_bias", _cast(b, dtype))
            add = gs.Node("Add", f"{layer.name}__bn_bias_add", inputs=[mid, bias], outputs=[out])
            graph.nodes.append(add)
            return add
        old = layer.inputs[2] if len(layer.inputs) > 2 and not is_empty(layer.inputs[2]) else None
        c = 0.0 if old is None else np.asarray(old.values, np.float64)
        if layer.op == "Gemm":
            c = c * float(layer.attrs.get("beta", 1.0))
            layer.attrs["beta"] = 1.0
        while len(layer.inputs) < 3:
            layer.inputs.append(gs.Variable.empty())
        layer.inputs[2] = gs.Constant(f"{layer.name}__bn_bias", _cast(a * c + b, dtype))
        return layer

    @staticmethod
    def _to_affine(graph: gs.Graph, bn: gs.Node, a: np.ndarray, b: np.ndarray) -> None:
        x, y = bn.inputs[0], bn.outputs[0]
        rank = tensor_rank(x)
        if rank is None:
            raise ConversionError(f"{bn.name} (BatchNormalization): input rank unknown after shape inference")
        dtype = np.float32 if x.dtype is None else np.dtype(x.dtype)
        shape = channel_shape(rank, a.size)
        mid = gs.Variable(f"{y.name}__bn_scaled", x.dtype, x.shape)
        detach(bn)
        graph.nodes.append(
            gs.Node(
                "Mul",
                f"{bn.name}__scale",
                inputs=[x, gs.Constant(f"{bn.name}__a", _cast(a.reshape(shape), dtype))],
                outputs=[mid],
            )
        )
        graph.nodes.append(
            gs.Node(
                "Add",
                f"{bn.name}__shift",
                inputs=[mid, gs.Constant(f"{bn.name}__b", _cast(b.reshape(shape), dtype))],
                outputs=[y],
            )
        )


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=dtype)


def _as_channels(v: np.ndarray, rank: int | None) -> np.ndarray:
    return v.reshape(channel_shape(rank, v.size)) if rank else v
