"""What an NIR export builds: one frozen record, the CLI's flags and defaults come from it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from icsnn_onnx.contract import metadata_key
from icsnn_onnx.errors import OptionError

Thresholds = Literal["unit", "keep"]
InitialPotential = Literal["bias", "none"]
Groups = Literal["dense", "keep"]

THRESHOLDS: tuple[Thresholds, ...] = ("unit", "keep")
INITIAL_POTENTIALS: tuple[InitialPotential, ...] = ("bias", "none")
GROUPS: tuple[Groups, ...] = ("dense", "keep")


@dataclass(frozen=True)
class NirOptions:
    """How the SNN's neurons are written as NIR.

    ``thresholds``: ``unit`` divides each site's input weights by its θ so every NIR threshold is
    1 (for consumers and chips with one threshold; spikes are the same in exact arithmetic);
    ``keep`` writes θ itself as the per-neuron ``v_threshold``. Either way a spike's weight θ is
    folded into the weights it drives.
    ``initial_potential``: NIR has no initial membrane potential. ``bias`` adds v(0)/T to the
    site's input current at every step (same spike count for a constant current; see
    docs/method.md §12); ``none`` drops v(0).
    ``groups``: ``dense`` writes grouped (depthwise) convolutions as dense ones with zero blocks
    (sinabs 3.1 cannot import grouped ones); ``keep`` writes ``groups`` as it is.
    """

    thresholds: Thresholds = "unit"
    initial_potential: InitialPotential = "bias"
    groups: Groups = "dense"

    def __post_init__(self) -> None:
        if self.thresholds not in THRESHOLDS:
            raise OptionError(f"thresholds must be one of {', '.join(THRESHOLDS)}, not {self.thresholds!r}")
        if self.initial_potential not in INITIAL_POTENTIALS:
            raise OptionError(
                f"initial_potential must be one of {', '.join(INITIAL_POTENTIALS)}, "
                f"not {self.initial_potential!r}"
            )

        if self.groups not in GROUPS:
            raise OptionError(f"groups must be one of {', '.join(GROUPS)}, not {self.groups!r}")

    def as_metadata(self) -> dict[str, str]:
        return {metadata_key(f.name): str(getattr(self, f.name)) for f in fields(self)}
