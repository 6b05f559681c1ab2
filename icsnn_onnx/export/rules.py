"""One export rule per ONNX op: how its output is written as NIR nodes over its inputs' values.

Each rule returns ``(sources, scale)`` (see :mod:`icsnn_onnx.export.lower`) and records a problem
for anything NIR cannot express exactly, so every offending node is reported at once.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from icsnn_onnx.export.lower import Lowering, Value, _channel_vector, _site_array, rule
from icsnn_onnx.ops.windows import attributes as attrs
from icsnn_onnx.ops.windows import resolve_pads


def _out_vector(hint: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The per-channel scale a Conv/Affine writes: the hint's, where it is one, else 1."""
    if hint is None:
        return np.ones(shape[0])
    vector = _channel_vector(np.broadcast_to(hint, shape), shape)
    return np.ones(shape[0]) if vector is None else vector


def _as_map(vector: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A per-channel vector as a scale broadcastable to ``shape``."""
    return vector.reshape(-1, *([1] * (len(shape) - 1)))


@rule("Conv")
def _conv(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    a, w = attrs(node), lo.constant(node.input[1])
    if w is None or w.ndim != 4:
        return lo.problem(node, "only 2-D convolutions with constant weights are written as NIR", tensor)
    b = lo.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
    if b is None:
        return lo.problem(node, "its bias is not a constant", tensor)
    x = node.input[0]
    in_shape, out_shape = lo.g.shape(x), lo.g.shape(tensor)
    strides, dilations = a.get("strides", [1, 1]), a.get("dilations", [1, 1])
    group = int(a.get("group", 1))
    pads = resolve_pads(a, in_shape[1:], w.shape[2:], strides, dilations)
    if pads[:2] != pads[2:]:
        return lo.problem(node, f"asymmetric padding {pads} has no NIR Conv2d form", tensor)
    sources, sx = lo.channel_input(x)
    out = _out_vector(hint, out_shape)
    cout, cin_group = w.shape[:2]
    # Input channel of weight [o, j]: group(o) · C_in/group + j.
    channel = (np.arange(cout) // (cout // group))[:, None] * cin_group + np.arange(cin_group)[None, :]
    weight = w * sx[channel][:, :, None, None] / out[:, None, None, None]
    conv = lo.conv(weight, b / out, strides, pads[:2], dilations, group, in_shape[1:])
    return [lo.add(node.name, conv, sources)], _as_map(out, out_shape)


def _affine(
    lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None, w: np.ndarray, b: np.ndarray
) -> Value:
    """``y = W x + b`` on per-sample vectors; x's per-feature scale folds into W's columns."""
    x = node.input[0]
    if len(lo.g.shape(x)) != 1:
        return lo.problem(node, "a matrix product over a per-sample matrix has no NIR form", tensor)
    sources, sx = lo.value(x)
    sx = np.broadcast_to(sx, lo.g.shape(x))
    out = _out_vector(hint, lo.g.shape(tensor))
    affine = lo.nir.Affine(
        weight=np.float32(w * sx[None, :] / out[:, None]),
        bias=np.float32(np.broadcast_to(b, out.shape) / out),
    )
    return [lo.add(node.name, affine, sources)], out


@rule("Gemm")
def _gemm(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    a, bmat = attrs(node), lo.constant(node.input[1])
    if a.get("transA", 0) or bmat is None:
        return lo.problem(node, "only Gemm of the input by a constant matrix is written as NIR", tensor)
    w = (bmat if a.get("transB", 0) else bmat.T) * float(a.get("alpha", 1.0))
    c = lo.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
    if c is None or c.size not in (1, w.shape[0]):
        return lo.problem(node, "its C is not a constant vector", tensor)
    return _affine(lo, node, tensor, hint, w, c.reshape(-1) * float(a.get("beta", 1.0)))


@rule("MatMul")
def _matmul(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    w = lo.constant(node.input[1])
    if w is None or w.ndim != 2:
        return lo.problem(node, "only MatMul by a constant 2-D matrix is written as NIR", tensor)
    return _affine(lo, node, tensor, hint, w.T, np.zeros(w.shape[1]))


@rule("Add", "Sum", "Sub")
def _add(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    shape = lo.g.shape(tensor)
    signs = [-1.0 if node.op_type == "Sub" and i == 1 else 1.0 for i in range(len(node.input))]
    streams = [(x, s) for x, s in zip(node.input, signs, strict=True) if lo.constant(x) is None]
    constant = sum(
        (
            s * _site_array(lo.constant(x), shape)
            for x, s in zip(node.input, signs, strict=True)
            if lo.constant(x) is not None
        ),
        np.zeros(()),
    )
    if not streams or streams[0][1] < 0 or any(lo.g.shape(x) != shape for x, _ in streams):
        return lo.problem(node, "only sums of same-shape tensors (and a constant) are written as NIR", tensor)
    if np.broadcast_shapes(constant.shape, shape) != shape:
        return lo.problem(node, "its constant term broadcasts beyond the tensor", tensor)
    has_bias = bool(np.any(constant != 0))
    sources, scale = lo.value(streams[0][0], hint, fresh=has_bias and len(streams) == 1)
    sources = list(sources)
    for x, sign in streams[1:]:  # fan-in: NIR sums the edges into a node
        sources += lo.exact(x, sign * np.asarray(scale))
    if has_bias:
        sources = lo.add_bias(sources, constant / scale, shape, tensor)
    return sources, scale


@rule("Mul", "Div")
def _mul(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    shape = lo.g.shape(tensor)
    values = [lo.constant(x) for x in node.input]
    constants = [i for i, v in enumerate(values) if v is not None]
    if len(constants) != 1 or (node.op_type == "Div" and constants != [1]):
        return lo.problem(node, "only products with one constant factor are written as NIR", tensor)
    factor = _site_array(values[constants[0]], shape)
    factor = 1.0 / factor if node.op_type == "Div" else factor
    if np.broadcast_shapes(factor.shape, shape) != shape or np.any(factor == 0):
        return lo.problem(node, "its factor is zero somewhere or broadcasts beyond the tensor", tensor)
    sources, scale = lo.value(node.input[1 - constants[0]], None if hint is None else hint / factor)
    return sources, scale * factor


def _pool(
    lo: Lowering,
    node: onnx.NodeProto,
    tensor: str,
    hint: np.ndarray | None,
    kernel: list[int],
    strides: list[int],
    pads: list[int],
    out_shape: tuple[int, ...] | None = None,
) -> Value:
    """Average pooling: SumPool2d with 1/k folded into the scale, or, padded (zeros counted), a
    depthwise convolution of weight 1/k (sinabs' SumPool2d ignores padding)."""
    x = node.input[0]
    in_shape, out_shape = lo.g.shape(x), out_shape or lo.g.shape(tensor)
    k = math.prod(kernel)
    if any(pads):
        if pads[:2] != pads[2:]:
            return lo.problem(node, f"asymmetric padding {pads} has no NIR form", tensor)
        sources, sx = lo.channel_input(x)
        out = _out_vector(hint, out_shape)
        weight = (sx / out / k).reshape(-1, 1, 1, 1) * np.ones((1, 1, *kernel))
        conv = lo.conv(weight, np.zeros(len(out)), strides, pads[:2], (1, 1), len(out), in_shape[1:])
        return [lo.add(node.name, conv, sources)], _as_map(out, out_shape)
    wanted = None if hint is None else _channel_vector(np.broadcast_to(hint, out_shape), out_shape)
    sources, sx = lo.value(x, None if wanted is None else _as_map(wanted * k, in_shape))
    vector = _channel_vector(np.broadcast_to(sx, in_shape), in_shape)
    if vector is None:
        sources, vector = lo.exact(x, np.ones(())), np.ones(in_shape[0])
    pool = lo.nir.SumPool2d(kernel_size=np.array(kernel), stride=np.array(strides), padding=np.zeros(2, int))
    return [lo.add(node.name, pool, sources)], _as_map(vector / k, out_shape)


@rule("AveragePool")
def _average_pool(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    a, in_shape = attrs(node), lo.g.shape(node.input[0])
    kernel = list(a.get("kernel_shape", []))
    if len(kernel) != 2 or len(in_shape) != 3:
        return lo.problem(node, "only 2-D average pooling is written as NIR", tensor)
    strides = list(a.get("strides", [1, 1]))
    pads = resolve_pads(a, in_shape[1:], kernel, strides, [1, 1])
    floor = tuple(
        (d + p0 + p1 - k) // s + 1
        for d, p0, p1, k, s in zip(in_shape[1:], pads[:2], pads[2:], kernel, strides, strict=True)
    )
    if lo.g.shape(node.output[0])[1:] != floor:
        return lo.problem(node, "ceil_mode windows past the border have no NIR form", tensor)
    if any(pads) and not a.get("count_include_pad", 0):
        return lo.problem(
            node,
            "padded windows averaged over their valid cells only (count_include_pad=0) are not one linear map",
            tensor,
        )
    return _pool(lo, node, tensor, hint, kernel, strides, pads)


@rule("GlobalAveragePool")
def _global_average_pool(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    in_shape = lo.g.shape(node.input[0])
    if len(in_shape) != 3:
        return lo.problem(node, "only 2-D global average pooling is written as NIR", tensor)
    return _pool(lo, node, tensor, hint, list(in_shape[1:]), list(in_shape[1:]), [0, 0, 0, 0])


@rule("ReduceMean")
def _reduce_mean(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    """The mean over the spatial axes (a global average pool as torch.export writes it)."""
    in_shape = lo.g.shape(node.input[0])
    axes = attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = lo.constant(node.input[1])
    spatial = {len(in_shape) - 1, len(in_shape)}
    if len(in_shape) != 3 or axes is None or {int(a) % (len(in_shape) + 1) for a in axes} != spatial:
        return lo.problem(node, "only a mean over the two spatial axes is written as NIR", tensor)
    kernel = list(in_shape[1:])
    keep = attrs(node).get("keepdims", 1)
    pooled = _pool(lo, node, tensor, hint if keep else None, kernel, kernel, [0] * 4, (in_shape[0], 1, 1))
    if keep:
        return pooled
    sources, scale = pooled
    flatten = lo.nir.Flatten(input_type={"input": np.array((in_shape[0], 1, 1))}, start_dim=0, end_dim=-1)
    return [lo.add(f"{node.name}_flatten", flatten, sources)], np.broadcast_to(
        scale, (in_shape[0], 1, 1)
    ).reshape(-1)


def _flatten(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    x = node.input[0]
    in_shape = lo.g.shape(x)
    if len(in_shape) <= 1:
        return lo.value(x, hint)
    wanted = None
    if hint is not None:
        wanted = _channel_vector(np.broadcast_to(hint, lo.g.shape(tensor)).reshape(in_shape), in_shape)
    sources, sx = lo.value(x, None if wanted is None else _as_map(wanted, in_shape))
    flatten = lo.nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1)
    return [lo.add(node.name, flatten, sources)], np.broadcast_to(sx, in_shape).reshape(-1).copy()


@rule("Flatten")
def _flatten_op(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    if attrs(node).get("axis", 1) != 1:
        return lo.problem(node, "only Flatten at axis 1 (keeping the batch axis) is written as NIR", tensor)
    return _flatten(lo, node, tensor, hint)


@rule("Reshape")
def _reshape(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    in_shape, out_shape = lo.g.shape(node.input[0]), lo.g.shape(tensor)
    if out_shape == in_shape:
        return lo.value(node.input[0], hint)
    if out_shape == (math.prod(in_shape),):
        return _flatten(lo, node, tensor, hint)
    return lo.problem(node, f"only a flattening Reshape is written as NIR ({in_shape} → {out_shape})", tensor)


@rule("Concat")
def _concat(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    """NIR has no concatenation: each input is embedded in the output's channels by a 1×1
    convolution (an affine map on vectors), and the embeddings fan in."""
    shape = lo.g.shape(tensor)
    axis = int(attrs(node).get("axis", 1))
    if axis + (len(shape) + 1 if axis < 0 else 0) != 1 or len(shape) not in (1, 3):
        return lo.problem(node, "only concatenation along channels is written as NIR", tensor)
    out = _out_vector(hint, shape)
    sources, offset = [], 0
    for i, x in enumerate(node.input):
        x_shape = lo.g.shape(x)
        srcs, sx = lo.channel_input(x)
        weight = np.zeros((shape[0], x_shape[0]))
        rows = offset + np.arange(x_shape[0])
        weight[rows, np.arange(x_shape[0])] = sx / out[rows]
        if len(shape) == 3:
            embed = lo.conv(
                weight[:, :, None, None], np.zeros(shape[0]), (1, 1), (0, 0), (1, 1), 1, x_shape[1:]
            )
        else:
            embed = lo.nir.Affine(weight=np.float32(weight), bias=np.zeros(shape[0], np.float32))
        sources.append(lo.add(f"{node.name}_{i}", embed, srcs))
        offset += x_shape[0]
    return sources, _as_map(out, shape)


@rule("Slice")
def _slice(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    """A strided slice (MaxPool's decomposition reads them) is a convolution whose kernel picks
    one cell: stride ``step``, one-hot at ``start``, of the size that gives the slice's length
    (``d − step·(n − 1)``); channels by one-hot rows."""
    x = node.input[0]
    in_shape, out_shape = lo.g.shape(x), lo.g.shape(tensor)
    args = [lo.constant(a) if a else None for a in node.input[1:]]
    starts, ends = args[0], args[1]
    if (
        starts is None
        or ends is None
        or any(a is None for a, name in zip(args[2:], node.input[3:], strict=True) if name)
    ):
        return lo.problem(
            node, "only Slice with constant starts, ends, axes and steps is written as NIR", tensor
        )
    rank = len(in_shape) + 1
    axes = args[2] if len(args) > 2 and args[2] is not None else np.arange(len(starts))
    steps = args[3] if len(args) > 3 and args[3] is not None else np.ones(len(starts))
    picked = [np.arange(d) for d in in_shape]
    for axis, b, e, s in zip(
        axes.astype(int), starts.astype(int), ends.astype(int), steps.astype(int), strict=True
    ):
        axis = axis + rank if axis < 0 else axis
        if axis == 0 or s <= 0:
            return lo.problem(
                node, "a Slice of the batch axis or with a negative step has no NIR form", tensor
            )
        picked[axis - 1] = picked[axis - 1][slice(b, e, s)]
    if tuple(len(p) for p in picked) != out_shape or any(len(p) == 0 for p in picked):
        return lo.problem(node, "its output shape does not follow from its constants", tensor)
    sources, sx = lo.channel_input(x)
    out = _out_vector(hint, out_shape)
    if len(in_shape) == 1:
        weight = np.zeros((out_shape[0], in_shape[0]))
        weight[np.arange(out_shape[0]), picked[0]] = sx[picked[0]] / out
        affine = lo.nir.Affine(weight=np.float32(weight), bias=np.zeros(out_shape[0], np.float32))
        return [lo.add(node.name, affine, sources)], out
    if len(in_shape) != 3:
        return lo.problem(node, "only Slice of vectors and (C, H, W) maps is written as NIR", tensor)
    first, stride, size = [], [], []
    for p, d in zip(picked[1:], in_shape[1:], strict=True):
        step = int(p[1] - p[0]) if len(p) > 1 else d  # one cell picked: any stride past the map
        if np.any(np.diff(p) != step):
            return lo.problem(node, "an irregular Slice has no convolution form", tensor)
        # The largest kernel with len(p) windows at this stride; p[0] is inside it.
        first.append(int(p[0]))
        stride.append(step)
        size.append(d - step * (len(p) - 1))
    whole = len(picked[0]) == in_shape[0]  # every channel kept: a depthwise kernel suffices
    weight = np.zeros((out_shape[0], 1 if whole else in_shape[0], *size))
    rows = np.arange(out_shape[0])
    weight[rows, 0 if whole else picked[0], first[0], first[1]] = sx[picked[0]] / out
    conv = lo.conv(
        weight, np.zeros(out_shape[0]), stride, (0, 0), (1, 1), in_shape[0] if whole else 1, in_shape[1:]
    )
    return [lo.add(node.name, conv, sources)], _as_map(out, out_shape)


@rule("Pad")
def _pad(lo: Lowering, node: onnx.NodeProto, tensor: str, hint: np.ndarray | None) -> Value:
    """Zero padding of the spatial axes (a padded MaxPool's decomposition) is a depthwise 1×1
    convolution with that padding."""
    x = node.input[0]
    in_shape, out_shape = lo.g.shape(x), lo.g.shape(tensor)
    a = attrs(node)
    mode = a.get("mode", b"constant")
    pads = (
        lo.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else np.asarray(a.get("pads", []))
    )
    value = lo.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
    axes = lo.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    rank = len(in_shape) + 1
    if pads is None or value is None or (len(node.input) > 3 and node.input[3] and axes is None):
        return lo.problem(node, "only Pad with constant pads and value is written as NIR", tensor)
    full = np.zeros(2 * rank, int)
    for i, axis in enumerate(range(rank) if axes is None else [int(a) % rank for a in axes]):
        full[axis], full[rank + axis] = int(pads[i]), int(pads[i + len(pads) // 2])
    begin, end = full[:rank], full[rank:]
    if (
        (mode.decode() if isinstance(mode, bytes) else mode) != "constant"
        or np.any(value != 0)
        or len(in_shape) != 3
        or np.any(full[:2] != 0)
        or np.any(full[rank : rank + 2] != 0)
        or np.any(begin[2:] != end[2:])
        or np.any(full < 0)
    ):
        return lo.problem(node, "only symmetric zero padding of H and W is written as NIR", tensor)
    sources, sx = lo.channel_input(x)
    out = _out_vector(hint, out_shape)
    conv = lo.conv(
        (sx / out).reshape(-1, 1, 1, 1), np.zeros(len(out)), (1, 1), begin[2:], (1, 1), len(out), in_shape[1:]
    )
    return [lo.add(node.name, conv, sources)], _as_map(out, out_shape)
