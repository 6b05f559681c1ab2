"""Equation tables: a neuron's dynamics as a list of elementwise ONNX operations.

A table is evaluated in numpy (:func:`evaluate`, with the semantics of
:mod:`icsnn_onnx.ops.elementwise`) and written as an ONNX function (:func:`function_proto`) from
the same entries, so a reference simulation and what a file computes cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from icsnn_onnx.ops.elementwise import evaluate as evaluate_op

#: A numpy form of an op that :func:`icsnn_onnx.ops.elementwise.evaluate` does not cover (the
#: channelwise neuron's 1×1 depthwise Conv), given the arguments in order.
Evaluator = Callable[..., np.ndarray]


@dataclass(frozen=True)
class AttributeRef:
    """An attribute of an equation's op that takes the value of the function's own attribute
    ``name`` (ONNX ``ref_attr_name``): e.g. a depthwise Conv's ``group`` from ``channels``."""

    name: str


@dataclass(frozen=True)
class Equation:
    """``result = op(*args)``, one line of a neuron's dynamics; ``attrs`` are the op's attributes
    (an :class:`AttributeRef` binds one to the function's own)."""

    result: str
    op_type: str
    args: tuple[str, ...]
    attrs: tuple[tuple[str, object], ...] = ()


def evaluate(
    equations: tuple[Equation, ...],
    env: dict[str, np.ndarray],
    evaluators: Mapping[str, Evaluator] | None = None,
) -> dict[str, np.ndarray]:
    """``env`` with every equation's result added, in order (numpy semantics of the ops;
    ``evaluators`` for ops that need their own)."""
    evaluators = evaluators or {}
    for eq in equations:
        args = [env[a] if a else None for a in eq.args]  # "": an optional input left out
        custom = evaluators.get(eq.op_type)
        if custom is not None:
            env[eq.result] = custom(*args)
        else:
            attrs = {k: v for k, v in eq.attrs if not isinstance(v, AttributeRef)}
            env[eq.result] = evaluate_op(eq.op_type, args, attrs)
    return env


def function_proto(
    domain: str,
    op_type: str,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    equations: tuple[Equation, ...],
    opset: int,
    doc: str,
    attributes: tuple[str, ...] = (),
    constants: tuple[tuple[str, np.ndarray], ...] = (),
) -> onnx.FunctionProto:
    """The model-local ONNX function ``domain::op_type(inputs) -> outputs`` whose body is the table,
    one node per equation named after its result (after a ``Constant`` node per constant the table
    reads). ONNX Runtime inlines it on any execution provider, so a converted model needs no
    custom-op library."""
    nodes = [
        helper.make_node(
            "Constant", [], [name], name=name, value=onnx.numpy_helper.from_array(np.asarray(value))
        )
        for name, value in constants
    ]
    for eq in equations:
        node = helper.make_node(eq.op_type, list(eq.args), [eq.result], name=eq.result)
        for key, value in eq.attrs:
            if isinstance(value, AttributeRef):
                ref = onnx.AttributeProto()
                ref.name, ref.ref_attr_name, ref.type = key, value.name, onnx.AttributeProto.INT
                node.attribute.append(ref)
            else:
                node.attribute.append(helper.make_attribute(key, value))
        nodes.append(node)
    return helper.make_function(
        domain,
        op_type,
        list(inputs),
        list(outputs),
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=list(attributes) if attributes else None,
        doc_string=doc,
    )
