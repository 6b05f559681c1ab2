"""Which ONNX Runtime execution provider runs a model: probed once, quietly.

With onnxruntime-gpu but no CUDA libraries, asking for CUDA logs an error nobody asked to see:
the CUDA provider is chosen only when a probe model really runs on it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os

import onnxruntime as ort
from onnx import TensorProto, helper

from icsnn_onnx.contract import SnnMetadata
from icsnn_onnx.errors import ProviderUnavailableError
from icsnn_onnx.quiet import ORT_SILENT, ort_log_severity

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PROVIDERS = {"cpu": CPU, "cuda": CUDA}


def _probe_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    return model.SerializeToString()


@functools.cache
def cuda_available() -> bool:
    """Whether the CUDA provider really runs here (probed once, without logging errors)."""
    if CUDA not in ort.get_available_providers():
        return False
    with ort_log_severity(ORT_SILENT):
        if importlib.util.find_spec("nvidia") is not None and hasattr(ort, "preload_dlls"):
            with contextlib.suppress(Exception):
                ort.preload_dlls()  # CUDA/cuDNN from NVIDIA's pip wheels ([cuda] extra)
        try:
            options = ort.SessionOptions()
            options.log_severity_level = ORT_SILENT
            session = ort.InferenceSession(_probe_model(), options, providers=[CUDA])
            return session.get_providers()[0] == CUDA
        except Exception:
            return False


def resolve_providers(provider: str = "auto") -> list[str]:
    """``auto`` → CUDA if it works, else CPU; ``cpu``/``cuda`` → that one (CUDA must work)."""
    if provider == "auto":
        return [CUDA, CPU] if cuda_available() else [CPU]
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be auto, cpu or cuda, got {provider!r}")
    if provider == "cuda" and not cuda_available():
        raise ProviderUnavailableError(
            "the CUDA provider is not usable here (no GPU, or CUDA libraries missing: "
            "install icsnn-onnx[cuda])"
        )
    return [PROVIDERS[provider], CPU] if provider == "cuda" else [CPU]


@functools.cache
def log_provider_once(provider: str) -> None:
    logger.info("ONNX Runtime runs on %s", provider)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def target_mismatch(snn: SnnMetadata | None, provider: str) -> str | None:
    """Why a model compiled with ``--target cpu`` should not run on ``provider`` (None if fine):
    its neurons are 1×1 convolutions whose spikes are exact only in float32 arithmetic, and a
    GPU's convolutions may run in TF32."""
    if snn is not None and snn.target == "cpu" and provider != CPU:
        return (
            f"this SNN was compiled with --target cpu but runs on {provider}, whose convolutions may "
            "round to TF32 and change spikes; compile with --target portable for GPUs"
        )
    return None
