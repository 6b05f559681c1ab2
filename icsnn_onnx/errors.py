"""Typed errors. Every error a user can cause derives from :class:`IcsnnError`.

The CLI maps ``IcsnnError`` to exit code 2 and one line on stderr; anything else is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass


class IcsnnError(Exception):
    """Base class of every error caused by the user's input (model, data, options)."""


class ModelLoadError(IcsnnError):
    """The file is missing, unreadable, not ONNX, truncated, or fails the ONNX checker."""


class OptionError(IcsnnError):
    """Conversion options that cannot go together (e.g. the loop layout with the cpu target)."""


class ConversionError(IcsnnError):
    """The model is valid ONNX but cannot be turned into an SNN as asked."""


@dataclass(frozen=True)
class UnsupportedNode:
    """One node that blocks conversion, and why."""

    name: str
    op_type: str
    reason: str
    output: str = ""  # the tensor it writes: how a user finds a node an exporter left unnamed

    def __str__(self) -> str:
        writes = f" → {self.output}" if self.output and self.output != self.name else ""
        return f"{self.name} ({self.op_type}{writes}): {self.reason}"


class UnsupportedOperatorError(ConversionError):
    """One or more nodes cannot be made spiking; lists all of them at once."""

    def __init__(self, nodes: list[UnsupportedNode], headline: str = "") -> None:
        if not nodes:
            raise ValueError("UnsupportedOperatorError needs at least one node")
        self.nodes = list(nodes)
        listed = "; ".join(str(n) for n in self.nodes)
        lead = f"{headline}; " if headline else ""
        super().__init__(f"{lead}{len(self.nodes)} node(s) cannot be converted to spiking: {listed}")


class ExportError(IcsnnError):
    """An SNN cannot be exported to the asked format (nothing is written)."""


class UnexportableError(ExportError):
    """Nodes of the SNN have no faithful form in the target format; lists all of them at once."""

    def __init__(self, nodes: list[UnsupportedNode], target: str) -> None:
        if not nodes:
            raise ValueError("UnexportableError needs at least one node")
        self.nodes = list(nodes)
        listed = "; ".join(str(n) for n in self.nodes)
        super().__init__(f"{len(self.nodes)} node(s) cannot be exported to {target}: {listed}")


class CalibrationError(IcsnnError):
    """Calibration data is missing, malformed, or does not fit the model."""


class DataError(IcsnnError):
    """A data file (calibration or evaluation) cannot be read or does not fit the model."""


class OutputExistsError(IcsnnError):
    """The output file exists and overwriting was not requested."""


class OutputPathError(IcsnnError):
    """The output cannot be written there: it is an input, a directory, in a missing folder, …"""


class ProviderUnavailableError(IcsnnError):
    """An explicitly requested ONNX Runtime execution provider cannot run here."""


class PassError(RuntimeError):
    """A pass failed unexpectedly (a bug, not a user error); names the pass.

    User errors raised inside a pass (any :class:`IcsnnError`) propagate unchanged with a note
    naming the pass, so callers can still catch them by type.
    """

    def __init__(self, pass_name: str, cause: Exception) -> None:
        self.pass_name = pass_name
        super().__init__(f"pass '{pass_name}' failed: {cause}")


class PreconditionError(RuntimeError):
    """A pass was run on a graph that does not satisfy its precondition (a pipeline bug)."""


class PostconditionError(RuntimeError):
    """A pass left the program inconsistent: its postcondition failed (a bug in that pass)."""
