"""Random-weight real architectures by name: the ONNX model zoo's graphs (onnx_zoo.py) and
torchvision's (torchvision_zoo.py), cached on disk. Apart from _common so that the helpers every
benchmark shares import none of the benchmarks' model builders."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_zoo
import torchvision_zoo


def architecture(name: str, size: int = 224, cache: Path | None = None, **build: object) -> onnx.ModelProto:
    """A random-weight real architecture: ``"zoo X"`` is the ONNX model zoo's X (onnx_zoo.py, 224×224),
    any other name torchvision's at ``size`` (torchvision_zoo.py, legacy exporter; ``build`` goes to
    its ``build``). Saved under ``cache/`` when one is given, and read from there next time."""
    path = cache / f"{name.replace(' ', '_')}.onnx" if cache is not None else None
    if path is not None and path.exists():
        return onnx.load(path)
    if name.startswith("zoo "):
        model = onnx_zoo.randomized(name.removeprefix("zoo "))
    else:
        model = torchvision_zoo.export(torchvision_zoo.build(name, size, **build), size, dynamo=False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, path)
    return model
