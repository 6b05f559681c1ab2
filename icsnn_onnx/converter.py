"""The public compile API: :func:`convert` (ANN → SNN) and :func:`inspect_model` (a report)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx

from icsnn_onnx._version import __version__
from icsnn_onnx.contract import COMPENSATED_KEY, CONVERTER_VERSION_KEY, NEURONS_KEY, SITES_KEY
from icsnn_onnx.data import DataSource, input_specs, load_dataset
from icsnn_onnx.errors import CalibrationError
from icsnn_onnx.model_io import load_model
from icsnn_onnx.options import ConversionOptions
from icsnn_onnx.passes import Pass, PassManager
from icsnn_onnx.passes.activations import RecognizeActivations
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
    same thresholds; Alg 2's layer-by-layer calibration stays in this process).
    """
    if options is None:
        options = ConversionOptions(**fields)  # type: ignore[arg-type]
    elif fields:
        raise TypeError(f"give options or keyword fields, not both (got {sorted(fields)})")
    source = load_model(model)
    dataset = None
    if calib is not None:
        dataset = load_dataset(calib, input_specs(source), what="calibration data", error=CalibrationError)
        dataset = dataset.reusable()  # the passes read it more than once
    program = import_model(source, options)
    PassManager(
        [
            *front_end(),
            CheckSupport(),
            ResolveInit(has_calibration=dataset is not None),
            CheckScale(),
            NormalizeThresholds(dataset, progress, engine),
            EncodeInputs(dataset),
            InitialPotential(),
            CalibrateInitialPotential(dataset, progress),  # where init is (or became) calibrated
            InsertNeurons(),
            Unroll(),
        ]
    )(program)
    result = finalize(program, source, options)
    logger.info("converted %d activation site(s) into IF neurons over T=%d", len(program.sites), options.T)
    return result


def finalize(program: Program, source: onnx.ModelProto, requested: ConversionOptions) -> onnx.ModelProto:
    """Export the SNN graph as a self-describing model the installed ONNX Runtime accepts; its
    metadata records the ``requested`` options (``auto`` values as asked; what they resolved to
    under their own keys)."""
    model = program.to_onnx()
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
        **program.metadata,
    }
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model
