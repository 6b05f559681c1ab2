"""The public compile API: :func:`convert` (ANN → SNN) and :func:`inspect_model` (a report)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import onnx
from onnx import numpy_helper

from icsnn_onnx._version import __version__
from icsnn_onnx.contract import (
    COMPENSATED_KEY,
    CONVERTER_VERSION_KEY,
    FIXED_INPUTS_KEY,
    NEURONS_KEY,
    SITES_KEY,
)
from icsnn_onnx.data import DataSource, Fixed, fixed_values, input_specs, load_dataset, sample_specs
from icsnn_onnx.data.fixed import compiled_record
from icsnn_onnx.errors import CalibrationError
from icsnn_onnx.model_io import load_model
from icsnn_onnx.options import ConversionOptions
from icsnn_onnx.passes import Pass, PassManager
from icsnn_onnx.passes.activations import RecognizeActivations
from icsnn_onnx.passes.bias import ApplyCurrentBias
from icsnn_onnx.passes.canonicalize import Canonicalize, import_model
from icsnn_onnx.passes.compensate import CheckSupport
from icsnn_onnx.passes.encoding import EncodeInputs
from icsnn_onnx.passes.fold_batchnorm import FoldBatchNorm
from icsnn_onnx.passes.initial_potential import CalibrateInitialPotential, InitialPotential, ResolveInit
from icsnn_onnx.passes.insert_neurons import InsertNeurons
from icsnn_onnx.passes.maxpool import LowerMaxPool
from icsnn_onnx.passes.program import Program
from icsnn_onnx.passes.scale import CheckScale
from icsnn_onnx.passes.thresholds import NormalizeThresholds
from icsnn_onnx.passes.unroll import Unroll
from icsnn_onnx.progress import ProgressFactory, silent
from icsnn_onnx.quiet import quiet_dependencies
from icsnn_onnx.runtime.engine import RayEngine

logger = logging.getLogger(__name__)

ModelSource = str | Path | bytes | onnx.ModelProto


def front_end() -> list[Pass]:
    """The passes that analyse the ANN (shared by :func:`convert` and :func:`inspect_model`)."""
    return [Canonicalize(), RecognizeActivations(), FoldBatchNorm(), LowerMaxPool()]


@quiet_dependencies()
def convert(
    model: ModelSource,
    calib: DataSource | None = None,
    *,
    options: ConversionOptions | None = None,
    progress: ProgressFactory = silent,
    engine: RayEngine | None = None,
    fixed: Mapping[str, object] | None = None,
    **fields: object,
) -> onnx.ModelProto:
    """Convert an ANN (path, bytes or ModelProto) into a T-step SNN ModelProto.

    ``options`` is the :class:`ConversionOptions` record of what to build; or give its fields as
    keywords (``T=8, init="calibrated"``), which build the same record (not both). ``calib``:
    calibration inputs (a file, a directory or glob of shards, an array, a dict, a Dataset or an
    iterable of batches such as a DataLoader), needed when some activation is an
    unclipped ReLU. Wrong option values raise ``ValueError``/``TypeError``; everything a model or
    its data can get wrong raises an :class:`~icsnn_onnx.IcsnnError`. The input model is never
    modified. ``engine``: compute the thresholds' calibration statistics on Ray workers (the
    same thresholds; Alg 2's layer-by-layer calibration stays in this process). ``fixed``: inputs
    that are not samples (a sample rate, a state), one value each (a number, a list, an array or
    an ``.npy`` path): compiled in as constants, so control flow on them folds; the SNN keeps them
    as inputs, and refuses to run with other values.
    """
    if options is None:
        options = ConversionOptions(**fields)  # type: ignore[arg-type]
    elif fields:
        raise TypeError(f"give options or keyword fields, not both (got {sorted(fields)})")
    source = load_model(model)
    values = fixed_values(fixed, input_specs(source))
    dataset = None
    if calib is not None:
        specs = sample_specs(input_specs(source), values)
        dataset = load_dataset(calib, specs, what="calibration data", error=CalibrationError)
        dataset = dataset.reusable()  # the passes read it more than once
    program = import_model(with_constants(source, values), options)
    PassManager(
        [
            *front_end(),
            CheckSupport(),
            ResolveInit(has_calibration=dataset is not None),
            CheckScale(),
            NormalizeThresholds(dataset, progress, engine),
            EncodeInputs(dataset),
            InitialPotential(),
            CalibrateInitialPotential(dataset, progress),  # Alg 2 and/or bias calibration, one pass
            ApplyCurrentBias(),
            InsertNeurons(),
            Unroll(),
        ]
    )(program)
    result = finalize(program, source, options, values)
    logger.info("converted %d activation site(s) into neurons over T=%d", len(program.sites), options.T)
    return result


def with_constants(source: onnx.ModelProto, fixed: Fixed) -> onnx.ModelProto:
    """``source`` with each fixed input given its value as an initializer (a constant once
    imported: what reads only it folds, an ``If`` on it is flattened to its branch)."""
    if not fixed:
        return source
    model = onnx.ModelProto()
    model.CopyFrom(source)
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in fixed.items())
    return model


def _restore_inputs(model: onnx.ModelProto, source: onnx.ModelProto, fixed: Fixed) -> None:
    """The SNN takes its ANN's inputs, in order: fixed ones too (unused inside, checked by the
    runtime), so it stays a drop-in replacement."""
    weights = {t.name for t in source.graph.initializer}
    _rename_fixed_constants(model.graph, set(fixed))
    have = {i.name: i for i in model.graph.input}
    inputs = [
        have.get(i.name, i)
        for i in source.graph.input
        if i.name not in weights and (i.name in have or i.name in fixed)
    ]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def _rename_fixed_constants(graph: onnx.GraphProto, names: set[str]) -> None:
    """A fixed value still read inside (by the network, not folded away) is a constant of its own
    name, ``<input>.fixed``: the input of that name stays an input the SNN takes (and ignores),
    not an initializer a caller could override."""
    for tensor in graph.initializer:
        if tensor.name in names:
            new = f"{tensor.name}.fixed"
            tensor.name = new
            _rename_reads(graph, {tensor.name.removesuffix(".fixed"): new})


def _rename_reads(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_reads(attribute.g, rename)


def finalize(
    program: Program, source: onnx.ModelProto, requested: ConversionOptions, fixed: Fixed | None = None
) -> onnx.ModelProto:
    """Export the SNN graph as a self-describing model the installed ONNX Runtime accepts; its
    metadata records the ``requested`` options (``auto`` values as asked; what they resolved to
    under their own keys) and the fixed inputs it was compiled for."""
    model = program.to_onnx()
    if fixed:
        _restore_inputs(model, source, fixed)
    model.producer_name = "icsnn-onnx"
    model.producer_version = __version__
    model.graph.name = f"{source.graph.name or 'model'}_snn"
    model.doc_string = (
        f"Spiking (IF neurons, T={program.options.T}) conversion of "
        f"'{source.graph.name or 'model'}' by icsnn-onnx {__version__}"
    )
    metadata = {
        **{p.key: p.value for p in source.metadata_props},
        CONVERTER_VERSION_KEY: __version__,
        **requested.as_metadata(),
        SITES_KEY: str(len(program.sites)),
        NEURONS_KEY: json.dumps(
            [
                {"site": s.name, "kind": s.neuron, "activation": s.transfer.describe()}
                for s in program.sites.values()
            ]
        ),
        COMPENSATED_KEY: json.dumps(
            [
                {"unit": u.name, "ops": list(u.op_types), "nodes": list(u.nodes), "reason": u.reason}
                for u in program.units.values()
            ]
        ),
        **({FIXED_INPUTS_KEY: compiled_record(fixed)} if fixed else {}),
        **program.metadata,
    }
    onnx.helper.set_model_props(model, metadata)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.shape_inference.InferenceError:
        wrong = _misdeclared_outputs(model)  # the source's own mistake, or a bug of ours: raise
        if not wrong:
            raise
        for name in wrong:
            logger.warning(
                "output %r: the source declares a shape it does not compute (ONNX Runtime warns on "
                "the source too); the SNN declares the shape it computes",
                name,
            )
        onnx.checker.check_model(model, full_check=True)
    return model


def _misdeclared_outputs(model: onnx.ModelProto) -> list[str]:
    """Graph outputs whose declared shape contradicts what the graph computes (ddddocr's CRNN
    declares ``[1, seqlen]`` for a ``[seq, 1, classes]`` output; the source passes the checker only
    because its older opset leaves the rank uninferred). Each is given its inferred shape, in place."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for output in probe.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(probe).graph.output}
    wrong = []
    for output in model.graph.output:
        found = inferred.get(output.name)
        declared = output.type.tensor_type
        if found is None or not declared.HasField("shape") or not found.type.tensor_type.HasField("shape"):
            continue
        got = found.type.tensor_type.shape.dim
        if len(got) != len(declared.shape.dim) or any(
            a.HasField("dim_value") and b.HasField("dim_value") and a.dim_value != b.dim_value
            for a, b in zip(declared.shape.dim, got, strict=True)
        ):
            declared.shape.CopyFrom(found.type.tensor_type.shape)
            wrong.append(output.name)
    return wrong
