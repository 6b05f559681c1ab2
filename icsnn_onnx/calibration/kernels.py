"""Which operators ONNX Runtime has: a compensated unit runs its op at every step, so an op no
ONNX Runtime build knows (a custom domain's) is refused before anything runs, by name."""

from __future__ import annotations

import functools

import onnxruntime as ort


@functools.cache
def _known() -> frozenset[tuple[str, str]]:
    schemas = ort.capi.onnxruntime_pybind11_state.get_all_operator_schema()
    return frozenset((s.domain or "", s.name) for s in schemas)


def has_kernel(domain: str, op_type: str) -> bool:
    """Whether this ONNX Runtime build registers ``domain::op_type`` (``""`` = ``ai.onnx``)."""
    domain = "" if domain in ("", "ai.onnx") else domain
    return (domain, op_type) in _known()
