"""Synaptic operations per destination layer and the energy estimate (docs/method.md §11)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icsnn_onnx.analysis.fanout import MEMBRANE, OTHER, SYNAPSE, Route
from icsnn_onnx.analysis.synapses import Synapse

ENERGY_CONVENTION = (
    "SNN: synaptic operations (each spike × the weights it reaches: its exact fan-out through "
    "pooling, Add and Concat) at e_ac each, plus the multiply-accumulates of the layers that "
    "compute on dense values (the input layer under direct coding, the output layer on the "
    "read-out, layers fed by a compensated unit: T × their MACs) at e_mac, plus every operation of "
    "the compensated units (their products' MACs and other ops' outputs and running means, T "
    "times) at e_mac; ANN: the same layers' multiply-accumulates at e_mac. A graded spike (--levels "
    "K > 1) is one event carrying its level k: each synaptic operation it drives multiplies the "
    "weight by k before accumulating, so it is counted at e_mac (a small-integer multiply in 32-bit "
    "float arithmetic; with levels restricted to powers of two it would be a shift-and-add, not "
    "assumed). Padding's zeros are "
    "not counted; elementwise adds of the ANN and the read-out's sums are not counted. Neuron "
    "updates (T × neurons, each its kind's operations) are reported apart, not included."
)


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation. Default: 45 nm CMOS, 32-bit float (Horowitz, ISSCC 2014): an
    accumulate 0.9 pJ, a multiply-accumulate 4.6 pJ."""

    e_ac: float = 0.9e-12  # J per synaptic operation (accumulate)
    e_mac: float = 4.6e-12  # J per multiply-accumulate
    source: str = "Horowitz, ISSCC 2014, 45 nm, 32-bit float: add 0.9 pJ, multiply-add 4.6 pJ"

    def __post_init__(self) -> None:
        if not (self.e_ac >= 0 and self.e_mac >= 0):
            raise ValueError("energies per operation must be >= 0")


@dataclass(frozen=True)
class SynapticLayer:
    name: str
    op_type: str  # Conv, Gemm, MatMul; "identity" for spikes into a membrane; "other"
    kind: str  # "SOP": receives spikes; "MAC": computes on dense values
    sops: float  # synaptic operations per sample
    snn_macs: float  # multiply-accumulates per sample in the SNN
    ann_macs: float  # multiply-accumulates per sample in the ANN
    graded_sops: float = 0.0  # of ``sops``, those driven by graded spikes (a level times a weight)

    @property
    def per_step(self) -> bool:
        return self.kind == "SOP"


def synaptic_layers(
    synapses: list[Synapse],
    routes: list[Route],
    spikes: dict[str, np.ndarray],
    macs: dict[str, int],
    samples: int,
    T: int,
    graded: frozenset[str] = frozenset(),
) -> tuple[list[SynapticLayer], list[str]]:
    """Every synaptic layer's SOPs (Σ over the spikes of each source of their fan-out along each
    route; those of the ``graded`` sources apart) or MACs per sample, and notes on what is counted
    as dense."""
    sops: dict[tuple[str, str], float] = {}
    graded_sops: dict[tuple[str, str], float] = {}
    for route in routes:
        source = spikes.get(route.source)
        if source is not None:
            key = (route.kind, route.target)
            value = float(np.sum(source * route.fanout)) / samples
            sops[key] = sops.get(key, 0.0) + value
            if route.source in graded:
                graded_sops[key] = graded_sops.get(key, 0.0) + value
    reached = {(r.kind, r.target) for r in routes}
    rows, notes = [], []
    for s in synapses:
        if (SYNAPSE, s.name) in reached:
            key = (SYNAPSE, s.name)
            rows.append(
                SynapticLayer(
                    s.name, s.op_type, "SOP", sops.get(key, 0.0), 0.0, macs[s.name], graded_sops.get(key, 0.0)
                )
            )
        elif s.stepped:  # runs every step on values no spike analysis covers: dense
            rows.append(SynapticLayer(s.name, s.op_type, "MAC", 0.0, T * macs[s.name], macs[s.name]))
            notes.append(
                f"{s.name} runs at every step on inputs that are not spikes: counted as T × its MACs"
            )
        else:
            rows.append(SynapticLayer(s.name, s.op_type, "MAC", 0.0, macs[s.name], macs[s.name]))
    for (kind, target), value in sops.items():
        if kind == MEMBRANE:
            rows.append(
                SynapticLayer(
                    f"→ {target}", "identity", "SOP", value, 0.0, 0.0, graded_sops.get((kind, target), 0.0)
                )
            )
        elif kind == OTHER:
            rows.append(
                SynapticLayer(target, "other", "SOP", value, 0.0, 0.0, graded_sops.get((kind, target), 0.0))
            )
            notes.append(
                f"spikes reach {target}, which the fan-out analysis does not see through: one operation per spike"
            )
    return rows, notes


def energy_record(
    synaptic: list[SynapticLayer],
    energy: EnergyModel,
    updates: float,
    compensated: float = 0.0,
    compensated_ann: float = 0.0,
) -> dict:
    """The estimate of ``E_SNN = e_ac·binary SOPs + e_mac·(graded SOPs + dense MACs + compensated
    units' ops)`` against ``E_ANN = e_mac·MACs`` (the ANN's own products of activations,
    ``compensated_ann``, included)."""
    sops = sum(s.sops for s in synaptic)
    graded = sum(s.graded_sops for s in synaptic)
    snn_macs = sum(s.snn_macs for s in synaptic) + compensated
    ann_macs = sum(s.ann_macs for s in synaptic) + compensated_ann
    return {
        "convention": ENERGY_CONVENTION,
        "source": energy.source,
        "e_ac_joules": energy.e_ac,
        "e_mac_joules": energy.e_mac,
        "sops_per_sample": sops,
        "snn_macs_per_sample": snn_macs,
        "ann_macs_per_sample": ann_macs,
        "graded_sops_per_sample": graded,
        "snn_joules_per_sample": (sops - graded) * energy.e_ac + (graded + snn_macs) * energy.e_mac,
        "ann_joules_per_sample": ann_macs * energy.e_mac,
        "neuron_updates_per_sample": updates,
        "compensated_ops_per_sample": compensated,
    }
