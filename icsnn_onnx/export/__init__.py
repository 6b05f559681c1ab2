"""Export an SNN file to NIR (the Neuromorphic Intermediate Representation).

:func:`to_nir` reads any SNN icsnn-onnx wrote (any layout) and returns an ``nir.NIRGraph`` with
one ``IF`` node per neuron site; :func:`export_nir` writes it (``nir.write``, temporary file and
rename) and reads it back (``nir.read``). What NIR cannot express is refused, every node at
once, before anything is written; what it expresses only approximately is listed in
:attr:`NirExport.notes` (and logged). docs/method.md §12 derives each mapping.

The ``nir`` package is optional: ``pip install "icsnn-onnx[nir]"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import onnx

from icsnn_onnx.contract import SnnMetadata, metadata_key
from icsnn_onnx.errors import ExportError, UnexportableError, UnsupportedNode
from icsnn_onnx.export.options import NirOptions
from icsnn_onnx.model_io import check_output, load_model, save_file

if TYPE_CHECKING:
    from icsnn_onnx.export.synaptic import SynapticGraph

__all__ = ["NirExport", "NirOptions", "export_nir", "to_nir"]

logger = logging.getLogger(__name__)

#: What a NIR consumer must know to run the graph as the SNN ran; also in the graph's metadata.
SEMANTICS = (
    "IF neuron, reset by subtraction: v += input; spike (1) when v >= v_threshold, then v -= "
    "v_threshold; at most one spike per step; no floor on v; v(0) = 0. One graph evaluation is one "
    "time step; the network's output is the mean of the Output node over T steps."
)


@dataclass(frozen=True)
class NirExport:
    """An exported graph and what it does not reproduce exactly."""

    graph: object  # nir.NIRGraph
    T: int
    sites: int
    notes: tuple[str, ...]  # approximations, each said once
    inputs: dict[str, str]  # ONNX input → NIR Input node
    outputs: dict[str, str]  # ONNX output → NIR Output node


def _nir() -> ModuleType:
    try:
        import nir
    except ImportError:
        raise ExportError('NIR export needs the nir package: pip install "icsnn-onnx[nir]"') from None
    return nir


def to_nir(snn: str | Path | onnx.ModelProto, options: NirOptions | None = None) -> NirExport:
    """The NIR graph of an SNN file; :class:`UnexportableError` lists everything NIR cannot say."""
    from icsnn_onnx.export import rules  # noqa: F401  (registers the per-op rules)
    from icsnn_onnx.export.lower import Lowering
    from icsnn_onnx.export.synaptic import SynapticGraph

    options = options or NirOptions()
    nir = _nir()
    model = load_model(snn)
    metadata = {p.key: p.value for p in model.metadata_props}
    snn_meta = SnnMetadata.read(metadata)
    if snn_meta is None:
        raise ExportError("not an SNN written by icsnn-onnx (no icsnn metadata): convert it first")
    graph = SynapticGraph(model)
    encoding = metadata.get(metadata_key("encoding"), "direct")
    if encoding != "direct":
        raise UnexportableError(
            [UnsupportedNode(x, "encoder", f"{encoding} input coding has no NIR form") for x in graph.inputs]
            or [UnsupportedNode("input", "encoder", f"{encoding} input coding has no NIR form")],
            "NIR",
        )
    lowering = Lowering(graph, options, nir)
    inputs = {x: lowering.input_node(x) for x in graph.inputs}
    outputs = {}
    for y in graph.outputs:
        shape = np.array(graph.shape(y))
        sources = lowering.exact(y, np.ones(()))
        outputs[y] = lowering.add(y, nir.Output(output_type={"output": shape}), sources)
    for layer in graph.layers:  # sites no output reads still have their problems reported
        lowering.neuron(layer)
    if lowering.problems:
        raise UnexportableError(lowering.problems, "NIR")
    notes = _notes(metadata, graph, options, nir)
    nir_metadata = {
        "producer": f"icsnn-onnx {snn_meta.converter_version}",
        "semantics": SEMANTICS,
        metadata_key("T"): str(snn_meta.T),
        **options.as_metadata(),
        "onnx_inputs": ",".join(f"{k}={v}" for k, v in inputs.items()),
        "onnx_outputs": ",".join(f"{k}={v}" for k, v in outputs.items()),
    }
    nir_graph = nir.NIRGraph(nodes=lowering.nodes, edges=lowering.edges, metadata=nir_metadata)
    for note in notes:
        logger.warning(note)
    return NirExport(nir_graph, snn_meta.T, len(graph.layers), notes, inputs, outputs)


def export_nir(
    snn: str | Path | onnx.ModelProto,
    path: str | Path,
    options: NirOptions | None = None,
    *,
    force: bool = False,
) -> NirExport:
    """Write the NIR graph of ``snn`` to ``path`` (HDF5, ``nir.write``) and check it reads back."""
    nir = _nir()
    target = check_output(path, force, inputs=(snn if isinstance(snn, str | Path) else None,))
    result = to_nir(snn, options)

    def write(tmp: Path) -> None:
        nir.write(tmp, result.graph)
        back = nir.read(tmp)
        if set(back.nodes) != set(result.graph.nodes) or len(back.edges) != len(result.graph.edges):
            raise ExportError(f"{target}: the written graph does not read back the same")

    save_file(write, target, force=force)
    return result


def _notes(
    metadata: dict[str, str], graph: SynapticGraph, options: NirOptions, nir: ModuleType
) -> tuple[str, ...]:
    notes = []
    if metadata.get(metadata_key("compensation")) == "True":
        notes.append(
            "the compensated read-out (residual membrane added back at T) has no NIR form: the "
            "NIR output is the mean over T of the head applied to the spikes"
        )
    v0 = [graph.constants.get(layer.v_init) for layer in graph.layers]
    if any(v is not None and np.any(v != 0) for v in v0):
        if options.initial_potential == "bias":
            notes.append(
                "NIR has no initial potential: v(0) is written as a bias v(0)/T on each site's input "
                "(the same spike count for a constant input, as the first layer's; approximate deeper)"
            )
        else:
            notes.append("NIR has no initial potential: v(0) is dropped (initial_potential='none')")
    if "v_reset" in getattr(nir.IF, "__dataclass_fields__", {}):
        notes.append(
            f"nir {getattr(nir, 'version', '?')} defines IF as reset to v_reset, not by subtraction: a "
            "consumer following it differs from icsnn-onnx's neuron (written with v_reset = 0)"
        )
    return tuple(notes)
