"""ONNX's sliding-window padding (Conv, AveragePool, MaxPool): ``auto_pad`` resolved to explicit
pads, one rule for the compiler's MaxPool lowering, the runtime's fan-out counts and the NIR
export; and the attribute mapping those rules read."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import onnx

SAME = ("SAME_UPPER", "SAME_LOWER")


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    """A node's attributes by name, as Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def auto_pad(attrs: Mapping[str, object]) -> str:
    """The ``auto_pad`` attribute as text (onnx gives bytes, onnx-graphsurgeon str)."""
    mode = attrs.get("auto_pad", "NOTSET")
    return mode.decode() if isinstance(mode, bytes) else str(mode)


def resolve_pads(
    attrs: Mapping[str, object],
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[int]:
    """Pads ``[begin…, end…]`` of a window op with these attributes over ``spatial`` dims."""
    n = len(kernel)
    mode = auto_pad(attrs)
    if mode in SAME:
        # Output ceil(d / s); the total padding splits with the odd one at the end (UPPER).
        total = [
            max((math.ceil(d / s) - 1) * s + (k - 1) * dl + 1 - d, 0)
            for d, s, k, dl in zip(spatial, strides, kernel, dilations, strict=True)
        ]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        return small + big if mode == "SAME_UPPER" else big + small
    if mode == "VALID":
        return [0] * (2 * n)
    return list(attrs.get("pads", [0] * (2 * n)))
