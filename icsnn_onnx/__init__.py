"""icsnn-onnx: compile ONNX ANNs into low-latency spiking networks that run on ONNX Runtime."""

from icsnn_onnx._version import __version__
from icsnn_onnx.converter import Inspection, convert, inspect_model
from icsnn_onnx.data import Dataset, load_dataset
from icsnn_onnx.errors import (
    CalibrationError,
    ConversionError,
    DataError,
    IcsnnError,
    ModelLoadError,
    OutputExistsError,
    OutputPathError,
    ProviderUnavailableError,
    UnsupportedOperatorError,
)
from icsnn_onnx.model_io import load_model, save_model
from icsnn_onnx.options import ConversionOptions
from icsnn_onnx.runtime import Evaluation, Session, evaluate

__all__ = [
    "CalibrationError",
    "ConversionError",
    "ConversionOptions",
    "DataError",
    "Dataset",
    "Evaluation",
    "IcsnnError",
    "Inspection",
    "ModelLoadError",
    "OutputExistsError",
    "OutputPathError",
    "ProviderUnavailableError",
    "Session",
    "UnsupportedOperatorError",
    "__version__",
    "convert",
    "evaluate",
    "inspect_model",
    "load_dataset",
    "load_model",
    "save_model",
]
