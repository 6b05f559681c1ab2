"""What control flow reads around it: the names an ``If``/``Loop``/``Scan`` body uses from the
graphs it sits in, which its node does not list as inputs (ONNX protos)."""

from __future__ import annotations

import onnx


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` (and its own subgraphs) read from the graphs around it."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {o for n in graph.node for o in n.output}
    used = set()
    for node in graph.node:
        used.update(i for i in node.input if i)
        used |= subgraph_reads(node)
    return used - defined


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names ``node``'s subgraphs read from the graph ``node`` is in."""
    found: set[str] = set()
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            found |= outer_reads(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            for graph in attribute.graphs:
                found |= outer_reads(graph)
    return found
