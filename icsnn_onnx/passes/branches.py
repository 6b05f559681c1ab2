"""``If`` nodes whose condition is a constant — once fixed inputs are constants, ``sr == 16000`` is
— replaced by the branch they take, before anything else looks at the graph: what the branch
holds is then converted like the rest (its activations spike), and the branch not taken is gone.

The condition is evaluated by ONNX's reference evaluator on the constants it derives from (a
scalar comparison, typically); the branch's nodes and initializers move into the graph with
their names prefixed (two branches of one model may reuse a name), and its outputs become the
``If``'s through ``Identity`` nodes (which :class:`~.canonicalize.Canonicalize` then removes).
Nested ``If`` nodes in a taken branch are resolved in turn.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

logger = logging.getLogger(__name__)

_MAX_ROUNDS = 64  # nested Ifs resolved level by level


def inline_constant_branches(model: onnx.ModelProto) -> int:
    """Replace, in place, every ``If`` of ``model``'s graph whose condition is a constant by the
    branch it takes (repeatedly: a taken branch's own Ifs too); return how many were replaced."""
    replaced = 0
    for _ in range(_MAX_ROUNDS):
        graph = model.graph
        constants = _constant_producers(graph)
        index = next(
            (
                i
                for i, n in enumerate(graph.node)
                if n.op_type == "If" and _is_constant(n.input[0], graph, constants)
            ),
            None,
        )
        if index is None:
            return replaced
        node = graph.node[index]
        taken = bool(np.asarray(_evaluate(node.input[0], model, constants)).reshape(-1)[0])
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if taken else "else_branch"))
        logger.info(
            "%s: condition is constant (%s): inlined its %s branch",
            node.name,
            taken,
            "then" if taken else "else",
        )
        _inline(graph, index, branch, f"{node.name or 'If'}.{'then' if taken else 'else'}.")
        replaced += 1
    return replaced


def _constant_producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto | None]:
    """Tensors computable from constants alone: initializers (None) and the outputs of nodes
    whose inputs all are (and that read no subgraph, take no random draw)."""
    known: dict[str, onnx.NodeProto | None] = {t.name: None for t in graph.initializer}
    inputs = {i.name for i in graph.input} - set(known)
    for node in graph.node:
        if node.op_type.startswith("Random") or any(
            a.type == onnx.AttributeProto.GRAPH for a in node.attribute
        ):
            continue
        if all((not i) or (i in known and i not in inputs) for i in node.input):
            known.update({o: node for o in node.output})
    return known


def _is_constant(name: str, graph: onnx.GraphProto, constants: dict) -> bool:
    return name in constants


def _evaluate(name: str, model: onnx.ModelProto, constants: dict[str, onnx.NodeProto | None]) -> np.ndarray:
    """The value of the constant tensor ``name``: its producers run by the reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    needed, todo = [], [name]
    seen: set[str] = set()
    while todo:
        tensor = todo.pop()
        producer = constants.get(tensor)
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        needed.append(producer)
        todo.extend(i for i in producer.input if i)
    order = [n for n in graph.node if id(n) in seen]
    used = {i for n in order for i in n.input}
    sub = helper.make_graph(
        order,
        "condition",
        [],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
        [t for t in graph.initializer if t.name in used or t.name == name],
    )
    small = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return ReferenceEvaluator(small).run(None, {})[0]


def _inline(graph: onnx.GraphProto, index: int, branch: onnx.GraphProto, prefix: str) -> None:
    """Put ``branch``'s nodes where the If at ``index`` was, its local names prefixed."""
    node = graph.node[index]
    local = {o for n in branch.node for o in n.output} | {t.name for t in branch.initializer}
    rename = {n: prefix + n for n in local}

    def renamed(name: str) -> str:
        return rename.get(name, name)

    nodes = []
    for inner in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        copy.name = prefix + (inner.name or inner.op_type)
        copy.input[:] = [renamed(i) for i in inner.input]
        copy.output[:] = [renamed(o) for o in inner.output]
        for attribute in copy.attribute:  # a nested subgraph reads the moved names too
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_reads(attribute.g, rename)
        nodes.append(copy)
    for out, branch_out in zip(node.output, branch.output, strict=True):
        nodes.append(helper.make_node("Identity", [renamed(branch_out.name)], [out], name=f"{prefix}{out}"))
    for tensor in branch.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = renamed(tensor.name)
        graph.initializer.append(copy)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*rest[:index], *nodes, *rest[index + 1 :]])


def _rename_reads(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Rename, in ``graph`` and its subgraphs, the reads of outer names it does not redefine."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {o for n in graph.node for o in n.output}
    outer = {k: v for k, v in rename.items() if k not in defined}
    for node in graph.node:
        node.input[:] = [outer.get(i, i) for i in node.input]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_reads(attribute.g, outer)
