"""The public compile API: :func:`convert` (ANN → SNN) and :func:`inspect_model` (a report)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

from icsnn_onnx._version import __version__
from icsnn_onnx.contract import CONVERTER_VERSION_KEY, SITES_KEY
from icsnn_onnx.data import DataSource, InputSpec, input_specs, load_dataset
from icsnn_onnx.errors import CalibrationError, UnsupportedNode
from icsnn_onnx.model_io import load_model
from icsnn_onnx.options import DEFAULT_MAXPOOL, ConversionOptions
from icsnn_onnx.passes import Pass, PassManager
from icsnn_onnx.passes.activations import RecognizeActivations
from icsnn_onnx.passes.canonicalize import Canonicalize, default_opset, import_model
from icsnn_onnx.passes.encoding import EncodeInputs
from icsnn_onnx.passes.fold_batchnorm import FoldBatchNorm
from icsnn_onnx.passes.initial_potential import CalibrateInitialPotential, InitialPotential, ResolveInit
from icsnn_onnx.passes.insert_neurons import InsertNeurons
from icsnn_onnx.passes.maxpool import LowerMaxPool
from icsnn_onnx.passes.program import ActivationKind, ActivationSite, Program
from icsnn_onnx.passes.scale import CheckScale
from icsnn_onnx.passes.temporal import CheckSupport, analyze_program, nonlinear_nodes, site_node_names
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
        **program.metadata,
    }
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_model` found: sites, op coverage, blockers."""

    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    source_opset: int
    producer: str
    sites: tuple[ActivationSite, ...]
    op_behaviour: tuple[tuple[str, str, int], ...]  # (op type, behaviour over time, count)
    blockers: tuple[UnsupportedNode, ...]
    maxpools: tuple[tuple[str, str], ...] = ()  # (MaxPool node, policy applied or "read-out")

    @property
    def convertible(self) -> bool:
        return bool(self.sites) and not self.blockers

    @property
    def needs_calibration(self) -> bool:
        return any(s.transfer.kind is ActivationKind.RELU for s in self.sites)


@quiet_dependencies()
def inspect_model(
    model: ModelSource, *, maxpool: str = DEFAULT_MAXPOOL, encoding: str = "direct"
) -> Inspection:
    """Analyse a model without converting it (no calibration needed), for these options."""
    source = load_model(model)
    program = import_model(source, ConversionOptions(maxpool=maxpool, encoding=encoding))
    PassManager(front_end())(program)
    in_sites = site_node_names(program)
    gates = program.gates
    plan, blocked = analyze_program(program)
    if not program.sites:
        blocked = nonlinear_nodes(program)
    blocked_names = {b.name for b in blocked}
    counts: Counter[tuple[str, str]] = Counter()
    for node in program.graph.nodes:
        if node.name in in_sites:
            behaviour = "activation → IF neuron"
        elif node.name in gates:
            behaviour = "spike gate (max accumulated input)"
        elif node.name in blocked_names:
            behaviour = "BLOCKS conversion"
        elif node.name in plan.head:
            behaviour = "once, on the read-out"
        elif node.name in plan.body:
            behaviour = "per step (affine)"
        elif node.name in plan.structural:
            behaviour = "once (shape only)"
        else:
            behaviour = "once (time-invariant)"
        counts[(node.op, behaviour)] += 1
    opset = default_opset(source)
    return Inspection(
        inputs=tuple(input_specs(source)),
        outputs=tuple(o.name for o in source.graph.output),
        source_opset=opset,
        producer=f"{source.producer_name} {source.producer_version}".strip(),
        sites=tuple(program.sites.values()),
        op_behaviour=tuple((op, b, n) for (op, b), n in sorted(counts.items())),
        blockers=tuple(blocked),
        maxpools=tuple(program.maxpools.items()),
    )
