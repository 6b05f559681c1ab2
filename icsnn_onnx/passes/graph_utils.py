"""Small helpers over onnx-graphsurgeon graphs shared by the passes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor, or ``None`` for a variable."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def is_empty(tensor: gs.Tensor) -> bool:
    """An omitted optional input."""
    return isinstance(tensor, gs.Variable) and tensor.name == ""


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def sole_consumer(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The only node reading ``tensor``, if it is read once and is not a graph output."""
    if is_graph_output(graph, tensor) or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def detach(node: gs.Node) -> None:
    """Disconnect a node from the graph; ``graph.cleanup()`` then drops it."""
    node.inputs.clear()
    node.outputs.clear()


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of ``old`` read ``new`` instead (graph outputs excluded)."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def bypass(graph: gs.Graph, node: gs.Node) -> None:
    """Remove a node whose first output equals its first input (Identity, inference Dropout).

    Graph output names are part of the model's contract: when the node writes a graph output,
    its producer is made to write that output instead; if that is impossible (the input is a
    graph input, a constant, or read elsewhere) the node becomes a plain Identity.
    """
    x, y = node.inputs[0], node.outputs[0]
    if not is_graph_output(graph, y):
        replace_uses(graph, y, x)
        detach(node)
        return
    src = producer(x)
    if (
        src is not None
        and isinstance(x, gs.Variable)
        and len(x.outputs) == 1
        and not is_graph_output(graph, x)
    ):
        detach(node)
        index = next(i for i, t in enumerate(src.outputs) if t is x)
        src.outputs[index] = y
        return
    node.op, node.attrs = "Identity", {}
    detach(node)
    node.inputs.append(x)
    node.outputs.append(y)


def channel_shape(rank: int, channels: int) -> list[int]:
    """Shape that broadcasts a per-channel vector along axis 1 of a rank-``rank`` tensor."""
    return [channels] + [1] * max(rank - 2, 0)


def static_dims(dims: Sequence[object] | None) -> bool:
    """Every dimension known and positive (no symbolic or unknown size)."""
    return dims is not None and all(isinstance(d, int) and d > 0 for d in dims)


def tensor_rank(tensor: gs.Tensor) -> int | None:
    shape = tensor.shape
    return None if shape is None else len(shape)


def rename_duplicates(graph: gs.Graph) -> None:
    """Give every tensor a name of its own. Generated names (``relu.threshold``, ``a@3``, …) might
    meet a tensor the model already calls so; the graph's inputs and outputs keep their names
    (the model's contract), the first other holder keeps its own and later ones get a suffix."""
    holders: dict[str, list[gs.Tensor]] = {}

    def hold(tensor: gs.Tensor) -> None:
        same = holders.setdefault(tensor.name, [])
        if tensor.name and not any(t is tensor for t in same):
            same.append(tensor)

    for tensor in (*graph.inputs, *graph.outputs):
        hold(tensor)
    for node in graph.nodes:
        for tensor in (*node.inputs, *node.outputs):
            hold(tensor)
    taken = set(holders)
    for name, tensors in holders.items():
        for k, tensor in enumerate(tensors[1:], start=1):
            fresh = f"{name}.{k}"
            while fresh in taken:
                fresh += "_"
            taken.add(fresh)
            tensor.name = fresh


def outer_scope_inputs(node: gs.Node) -> set[str]:
    """Names a node's subgraphs (If branches, Loop and Scan bodies) read from the graph around
    it: implicit inputs, which ``node.inputs`` does not list."""
    found: set[str] = set()
    for value in node.attrs.values():
        for graph in value if isinstance(value, list) else [value]:
            if isinstance(graph, gs.Graph):
                defined = {t.name for t in graph.inputs}
                for inner in graph.nodes:
                    defined.update(t.name for t in inner.outputs)
                for inner in graph.nodes:
                    found.update(t.name for t in inner.inputs if isinstance(t, gs.Variable) and t.name)
                    found.update(outer_scope_inputs(inner))
                found -= defined
    return found
