"""Load and save ONNX models safely.

Loading turns every way a file can be wrong (missing, a directory, a FIFO or device, not
protobuf, truncated, external data missing or outside the model's folder) into a
:class:`ModelLoadError`. Saving checks the target before any work (:func:`check_output`), never
replaces an input, never leaves a half-written file (a temporary file beside the target, then a
rename), replaces an existing file only with ``force`` — atomically: of two processes writing one
new path without ``force`` exactly one succeeds — and gives a new file the mode the umask
allows (a replaced file keeps its own).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from icsnn_onnx.errors import ModelLoadError, OutputExistsError, OutputPathError

_PROTOBUF_LIMIT = 2**31 - 1 - 2**24  # leave headroom under protobuf's 2 GiB limit


def load_model(
    source: str | Path | bytes | onnx.ModelProto, *, external_data: bool = True
) -> onnx.ModelProto:
    """Load a model (external data included unless ``external_data=False``) without modifying
    the source."""
    if isinstance(source, onnx.ModelProto):
        _check_contents(source, "the given model")
        return source
    if isinstance(source, bytes):
        return _parse(lambda: onnx.load_from_string(source), "the given bytes")
    if not isinstance(source, str | Path):
        raise TypeError(f"a model is a path, bytes or an onnx.ModelProto, not {type(source).__name__}")
    path = Path(source)
    check_readable_file(path, ModelLoadError)
    model = _parse(lambda: onnx.load(str(path), load_external_data=False), str(path))
    check_external_data(model, path)
    if external_data:
        try:
            onnx.load_external_data_for_model(model, str(path.resolve().parent))
        except (OSError, ValueError, onnx.checker.ValidationError, MemoryError) as err:
            raise ModelLoadError(f"{path}: cannot read its external data ({err})") from err
    return model


def check_readable_file(path: Path, error: type[Exception]) -> None:
    """``path`` is an existing, readable regular file (not a directory, FIFO or device)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as err:
        raise error(f"{path}: cannot read it ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path}: is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: not a regular file (a FIFO, socket or device)")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: not readable")


def _parse(read: object, where: str) -> onnx.ModelProto:
    try:
        model = read()  # type: ignore[operator]
    except (DecodeError, ValueError, OSError, RuntimeError, UnicodeDecodeError, MemoryError) as err:
        raise ModelLoadError(
            f"{where}: not an ONNX model or a truncated file ({type(err).__name__})"
        ) from err
    _check_contents(model, where)
    return model


def _check_contents(model: onnx.ModelProto, where: str) -> None:
    if not model.graph.node or not model.opset_import:
        raise ModelLoadError(f"{where}: not an ONNX model (no graph or no opset)")
    if not model.graph.output:
        raise ModelLoadError(f"{where}: the model has no outputs")


def check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Every tensor stored beside the model has its data file, inside the model's folder (onnx and
    ONNX Runtime refuse absolute locations and ones that climb out with ``..``)."""
    folder = path.resolve().parent
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = Path(location)
        if not location or target.is_absolute() or not (folder / target).resolve().is_relative_to(folder):
            raise ModelLoadError(
                f"{path}: tensor {tensor.name!r} has its data at {location!r}, outside the model's "
                "folder (absolute or with ..), which onnx refuses to read"
            )
        if not (folder / target).is_file():
            raise ModelLoadError(f"{path}: tensor {tensor.name!r}: its data file {location!r} is missing")


def _tensors(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
    """Every tensor a graph stores: initializers and attribute values, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _tensors(sub)


def check_output(path: str | Path, force: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Fail before any work if ``path`` cannot be written: it exists without ``force``, it is an
    input (the same file by any name, link or hard link), a directory, in a missing or non-
    directory parent, a name too long, or in a folder this process cannot write."""
    path = Path(path)
    name_max = 255
    with contextlib.suppress(OSError, ValueError):
        name_max = os.pathconf(path.parent if path.parent.exists() else ".", "PC_NAME_MAX")
    if len(os.fsencode(path.name)) > name_max:
        raise OutputPathError(f"{path.name[:40]}…: file name longer than {name_max} bytes")
    parent = path.parent
    if not parent.exists():
        raise OutputPathError(f"{parent}: no such directory")
    if not parent.is_dir():
        raise OutputPathError(f"{parent}: not a directory")
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise OutputPathError(f"{path} is the input {source}: the input is never overwritten")
    if path.is_dir():
        raise OutputPathError(f"{path}: is a directory")
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputExistsError(f"{path} exists (use --force to overwrite)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{parent}: cannot write in this directory")
    try:  # permissions do not tell everything (root, read-only or special file systems): try it
        fd, probe = tempfile.mkstemp(prefix=".icsnn-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"{parent}: cannot write in this directory ({err.strerror})") from None
    return path


def check_writable(path: str | Path, force: bool) -> Path:
    """:func:`check_output` without inputs (kept for callers of earlier releases)."""
    return check_output(path, force)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def save_model(
    model: onnx.ModelProto, path: str | Path, *, force: bool = False, inputs: Iterable[str | Path | None] = ()
) -> Path:
    """Write ``model`` to ``path`` atomically (temporary file + rename); see the module docstring."""
    path = check_output(path, force, inputs)

    def write(tmp: Path) -> None:
        if model.ByteSize() > _PROTOBUF_LIMIT:
            # Weights go to a side file next to the model (written first, then the model).
            onnx.save(model, tmp, save_as_external_data=True, location=f"{path.name}.data")
        else:
            onnx.save(model, tmp)

    return save_file(write, path, force=force)


def save_text(text: str, path: str | Path) -> Path:
    """Write a small text file atomically (temporary file beside it, then rename), replacing it."""
    return save_file(lambda tmp: tmp.write_text(text), Path(path), force=True)


def save_file(write: Callable[[Path], None], path: Path, *, force: bool) -> Path:
    """Let ``write`` fill a temporary file beside ``path``, then move it into place (replacing an
    existing file only with ``force``): a reader never sees a half-written file, and a failure
    leaves nothing behind. ``path`` is assumed checked (:func:`check_output`)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OutputPathError(f"{path.parent}: cannot write in this directory ({err.strerror})") from None
    os.close(fd)
    try:
        write(Path(tmp))
        _publish(Path(tmp), path, force)
    except OSError as err:  # the disk filled up, the file system went read-only, …
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise OutputPathError(f"{path}: cannot write it ({err.strerror or err})") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _publish(tmp: Path, path: Path, force: bool) -> None:
    """Move the finished file into place: replacing (``force``, keeping the old file's mode) or
    only if nothing is there (a hard link fails if the target exists: no check-then-rename race)."""
    try:
        existing = path.stat().st_mode if force else None
    except FileNotFoundError:
        existing = None
    os.chmod(tmp, stat.S_IMODE(existing) if existing is not None else 0o666 & ~_umask())
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(f"{path} exists (use --force to overwrite)") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # No hard links here: reserve the name exclusively, then rename over the reservation.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise OutputExistsError(f"{path} exists (use --force to overwrite)") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
