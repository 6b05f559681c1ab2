"""Load and save ONNX models safely.

Loading turns every way a file can be wrong (missing, a directory, not protobuf, truncated)
into a :class:`ModelLoadError`. Saving never leaves a half-written file: the model is written
to a temporary file beside the target and renamed over it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from icsnn_onnx.errors import ModelLoadError, OutputExistsError

_PROTOBUF_LIMIT = 2**31 - 1 - 2**24  # leave headroom under protobuf's 2 GiB limit


def load_model(
    source: str | Path | bytes | onnx.ModelProto, *, external_data: bool = True
) -> onnx.ModelProto:
    """Load a model (external data included unless ``external_data=False``) without modifying
    the source."""
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, bytes):
        return _parse(lambda: onnx.load_from_string(source), "the given bytes")
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"{path}: not readable")
    return _parse(lambda: onnx.load(str(path), load_external_data=external_data), str(path))


def _parse(read: object, where: str) -> onnx.ModelProto:
    try:
        model = read()  # type: ignore[operator]
    except (DecodeError, ValueError, OSError, RuntimeError, UnicodeDecodeError) as err:
        raise ModelLoadError(
            f"{where}: not an ONNX model or a truncated file ({type(err).__name__})"
        ) from err
    if not model.graph.node or not model.opset_import:
        raise ModelLoadError(f"{where}: not an ONNX model (no graph or no opset)")
    return model


def check_writable(path: str | Path, force: bool) -> Path:
    """Fail early, before any work, if ``path`` exists and ``force`` is not set."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists (use --force to overwrite)")
    if not path.parent.exists():
        raise OutputExistsError(f"{path.parent}: no such directory")
    return path


def save_model(model: onnx.ModelProto, path: str | Path, *, force: bool = False) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file + rename)."""
    path = check_writable(path, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if model.ByteSize() > _PROTOBUF_LIMIT:
            # Weights go to a side file next to the model (written first, then the model).
            onnx.save(model, tmp, save_as_external_data=True, location=f"{path.name}.data")
        else:
            onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
