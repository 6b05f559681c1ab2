"""Bring any exporter's ONNX to one dialect, so later passes see one canonical form.

- :func:`import_model`: ONNX checker, initializers-as-inputs (opset <= 9 style) become
  constants, conversion to :data:`CANONICAL_OPSET`, shape inference, graphsurgeon import.
- :class:`Canonicalize`: fold constant subgraphs (``Constant`` nodes, ``ConstantOfShape``-filled
  weights, shape arithmetic), remove Identity and inference Dropout, ``Sum`` → chain of ``Add``,
  give every node a unique name (error messages name nodes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper, version_converter

from icsnn_onnx.contract import CONVERTER_VERSION_KEY, NEURON_DOMAIN, T_KEY
from icsnn_onnx.errors import ConversionError, ModelLoadError
from icsnn_onnx.limits import available_memory, human
from icsnn_onnx.ops.elementwise import FLOAT_TENSOR_TYPES
from icsnn_onnx.options import ConversionOptions
from icsnn_onnx.passes import Pass, PassResult, ensure
from icsnn_onnx.passes.branches import inline_constant_branches
from icsnn_onnx.passes.graph_utils import bypass, detach, is_graph_output
from icsnn_onnx.passes.program import Program

logger = logging.getLogger(__name__)

#: The one opset every pass works in (and the converted model is written in).
CANONICAL_OPSET = 21

#: The first IR version in which an initializer need not be listed among the graph inputs.
_IR_INITIALIZERS_NOT_INPUTS = 4


def default_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    raise ModelLoadError("the model imports no version of the default ONNX opset")


def import_model(model: onnx.ModelProto, options: ConversionOptions) -> Program:
    """Validate ``model`` and import it as a :class:`Program` in the canonical opset.

    Never modifies ``model``.
    """
    _refuse_spiking(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise ModelLoadError(f"not a valid ONNX model: {first}") from err
    _refuse_non_finite(model)
    model = _copy(model)
    _initializers_are_not_inputs(model)
    inline_constant_branches(model)  # an If on a constant (a fixed input) is its branch
    source = default_opset(model)
    if source != CANONICAL_OPSET:
        try:
            model = version_converter.convert_version(model, CANONICAL_OPSET)
        except Exception as err:  # the converter raises bare RuntimeErrors
            raise ModelLoadError(
                f"cannot convert opset {source} to {CANONICAL_OPSET}: {str(err).splitlines()[0]}"
            ) from err
        logger.info("converted opset %d -> %d", source, CANONICAL_OPSET)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:
        raise ModelLoadError(f"shape inference failed: {str(err).splitlines()[0]}") from err
    extra = {op.domain: op.version for op in model.opset_import if op.domain not in ("", "ai.onnx")}
    graph = gs.import_onnx(model)
    return Program(graph=graph, options=options, opset=CANONICAL_OPSET, extra_opsets=extra)


def _static_bytes(tensor: gs.Tensor) -> int | None:
    shape, dtype = tensor.shape, tensor.dtype
    if shape is None or dtype is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        return None
    return math.prod(shape) * itemsize


def _refuse_spiking(model: onnx.ModelProto) -> None:
    metadata = {p.key: p.value for p in model.metadata_props}
    spiking = CONVERTER_VERSION_KEY in metadata or any(o.domain == NEURON_DOMAIN for o in model.opset_import)
    if spiking:
        T = metadata.get(T_KEY, "?")
        raise ConversionError(
            f"the model is already a spiking network made by icsnn-onnx (T={T}); convert the ANN it came from"
        )


def _refuse_non_finite(model: onnx.ModelProto) -> None:
    """Weights with NaN or Inf make every threshold and spike meaningless: name them all. A single
    ±Inf is a sentinel, not a weight (``max(x, -inf)``, a mask's fill): ONNX Runtime runs it."""
    bad = []
    for tensor in _stored_tensors(model.graph):
        if tensor.data_type not in FLOAT_TENSOR_TYPES or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        values = numpy_helper.to_array(tensor)
        if values.size == 1 and np.isinf(values).all():
            continue
        count = values.size - int(np.count_nonzero(np.isfinite(values)))
        if count:
            bad.append(f"{tensor.name or '(a Constant)'} ({count} of {values.size})")
    if bad:
        raise ModelLoadError(f"weights contain NaN or Inf: {', '.join(bad)}")


def _stored_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _initializers_are_not_inputs(model: onnx.ModelProto) -> None:
    """Opset <= 9 exporters list weights as graph inputs; they are constants here.

    IR version 3 requires every initializer to be a graph input (the version converter then
    reports the weights as undefined), so a model that no longer lists them says IR 4, the
    first version where initializers need not be inputs.
    """
    weights = {init.name for init in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in weights]
    if len(kept) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.ir_version = max(model.ir_version, _IR_INITIALIZERS_NOT_INPUTS)


class Canonicalize(Pass):
    """Constant folding and removal of no-op nodes (see module docstring)."""

    NO_OPS = ("Identity", "Dropout")

    def call(self, program: Program) -> PassResult:
        graph = program.graph
        before = len(graph.nodes)
        self._name_nodes(graph)
        self._refuse_oversized(graph)
        # Ifs on constants were inlined at import (branches.py), the same way for every model
        graph.fold_constants(error_ok=True, flatten_subgraphs=False).cleanup(remove_unused_graph_inputs=False)
        changed = self._sum_to_add(graph) | self._remove_no_ops(graph)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        self._name_nodes(graph)
        return PassResult(program, changed or len(graph.nodes) != before)

    def ensures(self, program: Program) -> None:
        for node in program.graph.nodes:
            ensure(node.op != "Sum", self.name, f"Sum node {node.name} left")
            removable = node.op == "Dropout" and self._removable(program.graph, node)
            ensure(not removable, self.name, f"inference Dropout {node.name} left")
            ensure(bool(node.name), self.name, "unnamed node left")

    @staticmethod
    def _refuse_oversized(graph: gs.Graph) -> None:
        """A tensor of static shape larger than memory (a 40 GB constant fill, an input with a
        static batch of 2^40) would end constant folding or calibration in a MemoryError."""
        limit = available_memory()
        for node in graph.nodes:
            for tensor in node.outputs:
                size = _static_bytes(tensor)
                if size is not None and size > limit:
                    raise ConversionError(
                        f"{node.name} ({node.op}) produces {tensor.name} of shape {list(tensor.shape)}: "
                        f"{human(size)}, more than the {human(limit)} of memory available"
                    )

    @staticmethod
    def _name_nodes(graph: gs.Graph) -> None:
        taken: set[str] = set()
        for i, node in enumerate(graph.nodes):
            if not node.name or node.name in taken:
                base = node.name or f"{node.op}_{i}"
                node.name = base if base not in taken else f"{base}_{i}"
            taken.add(node.name)

    def _remove_no_ops(self, graph: gs.Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if not self._removable(graph, node):
                continue
            while len(node.outputs) > 1:  # graphsurgeon's lists don't support slice deletion
                node.outputs.pop()
            while len(node.inputs) > 1:
                node.inputs.pop()
            bypass(graph, node)
            changed = True
        return changed

    @classmethod
    def _removable(cls, graph: gs.Graph, node: gs.Node) -> bool:
        """An Identity, or an inference Dropout whose mask is neither read nor returned."""
        if node.op not in cls.NO_OPS or not node.inputs:
            return False
        if node.op == "Dropout" and not cls._dropout_is_identity(node):
            return False
        return not any(extra.outputs or is_graph_output(graph, extra) for extra in node.outputs[1:])

    @staticmethod
    def _dropout_is_identity(node: gs.Node) -> bool:
        # Opset >= 12 Dropout reads training_mode as an input; absent or constant False is inference.
        if len(node.inputs) > 2 and node.inputs[2].name:
            mode = node.inputs[2]
            return isinstance(mode, gs.Constant) and not bool(np.asarray(mode.values))
        return True

    @staticmethod
    def _sum_to_add(graph: gs.Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if node.op != "Sum":
                continue
            operands, out = list(node.inputs), node.outputs[0]
            detach(node)
            if len(operands) == 1:
                graph.nodes.append(gs.Node("Identity", f"{node.name}", inputs=operands, outputs=[out]))
                changed = True
                continue
            acc = operands[0]
            for k, operand in enumerate(operands[1:], start=1):
                last = k == len(operands) - 1
                target = out if last else gs.Variable(f"{out.name}__sum{k}", out.dtype, out.shape)
                graph.nodes.append(
                    gs.Node("Add", f"{node.name}__add{k}", inputs=[acc, operand], outputs=[target])
                )
                acc = target
            changed = True
        return changed
