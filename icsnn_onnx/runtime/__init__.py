"""Run converted (or any) ONNX models on ONNX Runtime and evaluate them."""

from icsnn_onnx.runtime.evaluate import Evaluation, evaluate
from icsnn_onnx.runtime.providers import cuda_available, resolve_providers
from icsnn_onnx.runtime.session import Session

__all__ = ["Evaluation", "Session", "cuda_available", "evaluate", "resolve_providers"]
