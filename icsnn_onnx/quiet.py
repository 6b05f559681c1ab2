"""Dependencies' chatter goes to the log, not to the user's terminal.

During a conversion, onnx-graphsurgeon prints warnings (``colored module is not installed``,
``foldable nodes that produce large outputs``), ONNX Runtime's C++ logger writes optimizer
warnings to stderr (``UnsqueezeElimination cannot remove node …``, 84 lines for a ViT), and numpy
warns about overflows in statistics it is asked for. None of it is the user's business unless
they ask for debug output: graphsurgeon's messages and Python warnings are re-logged at DEBUG
under ``icsnn_onnx.dependencies``; ONNX Runtime's native log cannot be redirected, so it is
raised to errors only unless that logger is enabled for DEBUG (``--debug``).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

logger = logging.getLogger("icsnn_onnx.dependencies")

#: ONNX Runtime's default severity (warnings and above) and the levels used here.
ORT_DEFAULT_SEVERITY = 2
ORT_ERRORS_ONLY = 3
ORT_SILENT = 4


_ort_severity = [ORT_DEFAULT_SEVERITY]  # ONNX Runtime has a setter, no getter: nesting is kept here


@contextlib.contextmanager
def ort_log_severity(severity: int) -> Iterator[None]:
    """ONNX Runtime's default logger at ``severity`` for sessions created inside (at most as
    verbose as an enclosing setting); the enclosing severity after."""
    import onnxruntime as ort

    _ort_severity.append(max(severity, _ort_severity[-1]) if len(_ort_severity) > 1 else severity)
    ort.set_default_logger_severity(_ort_severity[-1])
    try:
        yield
    finally:
        _ort_severity.pop()
        ort.set_default_logger_severity(_ort_severity[-1])


@contextlib.contextmanager
def quiet_dependencies() -> Iterator[None]:
    """Route the dependencies' output to the log for the duration (see the module docstring)."""
    severity = ORT_DEFAULT_SEVERITY if logger.isEnabledFor(logging.DEBUG) else ORT_ERRORS_ONLY
    with _graphsurgeon_to_log(), _warnings_to_log(), ort_log_severity(severity):
        yield


@contextlib.contextmanager
def _graphsurgeon_to_log() -> Iterator[None]:
    from onnx_graphsurgeon.logger import G_LOGGER

    def log(message: object, severity: int, *args: object, **kwargs: object) -> None:
        if severity >= G_LOGGER.severity:
            logger.debug("onnx-graphsurgeon: %s", message() if callable(message) else message)

    enclosing = G_LOGGER.__dict__.get("log")
    G_LOGGER.log = log  # an instance attribute shadows the method that prints
    try:
        yield
    finally:
        if enclosing is None:
            del G_LOGGER.log
        else:
            G_LOGGER.log = enclosing


@contextlib.contextmanager
def _warnings_to_log() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                logger.debug("%s: %s (%s:%d)", w.category.__name__, w.message, w.filename, w.lineno)


@contextlib.contextmanager
def native_stderr_to_log(source: str) -> Iterator[None]:
    """File descriptor 2 into a temporary file for the duration, its lines re-logged at DEBUG:
    for native code (Ray's C++ core) that writes to stderr with no logger to raise. Process-wide,
    so only around calls that block this process until they return."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                logger.debug("%s: %s", source, line)
