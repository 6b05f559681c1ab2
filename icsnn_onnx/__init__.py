"""icsnn-onnx: compile ONNX ANNs into low-latency spiking networks that run on ONNX Runtime.

The public names below are imported on first use (PEP 562), so a deployment that only runs SNN
files (``import icsnn_onnx.runtime``) loads neither the compiler nor onnx-graphsurgeon.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from icsnn_onnx._version import __version__

# public name → the module that defines it
_EXPORTS = {
    "convert": "icsnn_onnx.converter",
    "inspect_model": "icsnn_onnx.inspection",
    "Inspection": "icsnn_onnx.inspection",
    "tune": "icsnn_onnx.tuning",
    "TuneResult": "icsnn_onnx.tuning",
    "ConversionOptions": "icsnn_onnx.options",
    "Dataset": "icsnn_onnx.data",
    "load_dataset": "icsnn_onnx.data",
    "Stream": "icsnn_onnx.data",
    "load_model": "icsnn_onnx.model_io",
    "save_model": "icsnn_onnx.model_io",
    "Session": "icsnn_onnx.runtime",
    "Evaluation": "icsnn_onnx.runtime",
    "evaluate": "icsnn_onnx.runtime",
    "diagnose": "icsnn_onnx.analysis.diagnose",
    "report": "icsnn_onnx.analysis.report",
    "Report": "icsnn_onnx.analysis.report",
    "EnergyModel": "icsnn_onnx.analysis.report",
    **{
        name: "icsnn_onnx.errors"
        for name in (
            "IcsnnError",
            "ModelLoadError",
            "ConversionError",
            "UnsupportedOperatorError",
            "CalibrationError",
            "DataError",
            "OptionError",
            "OutputExistsError",
            "OutputPathError",
            "ProviderUnavailableError",
        )
    },
}

__all__ = [
    "CalibrationError",
    "ConversionError",
    "ConversionOptions",
    "DataError",
    "Dataset",
    "EnergyModel",
    "Evaluation",
    "IcsnnError",
    "Inspection",
    "ModelLoadError",
    "OptionError",
    "OutputExistsError",
    "OutputPathError",
    "ProviderUnavailableError",
    "Report",
    "Session",
    "Stream",
    "TuneResult",
    "UnsupportedOperatorError",
    "__version__",
    "convert",
    "diagnose",
    "evaluate",
    "inspect_model",
    "load_dataset",
    "load_model",
    "report",
    "save_model",
    "tune",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'icsnn_onnx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from icsnn_onnx.analysis.diagnose import diagnose
    from icsnn_onnx.analysis.report import EnergyModel, Report, report
    from icsnn_onnx.converter import convert
    from icsnn_onnx.data import Dataset, Stream, load_dataset
    from icsnn_onnx.errors import (
        CalibrationError,
        ConversionError,
        DataError,
        IcsnnError,
        ModelLoadError,
        OptionError,
        OutputExistsError,
        OutputPathError,
        ProviderUnavailableError,
        UnsupportedOperatorError,
    )
    from icsnn_onnx.inspection import Inspection, inspect_model
    from icsnn_onnx.model_io import load_model, save_model
    from icsnn_onnx.options import ConversionOptions
    from icsnn_onnx.runtime import Evaluation, Session, evaluate
    from icsnn_onnx.tuning import TuneResult, tune
