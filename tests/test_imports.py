"""A deployment that only runs SNN files imports no compiler."""

from __future__ import annotations

import subprocess
import sys


def _imports_none_of(imports: str, banned: tuple[str, ...]) -> None:
    """In a fresh interpreter, ``imports`` loads no module whose name starts with ``banned``."""
    code = (
        f"import sys; {imports}; "
        f"bad = [m for m in sys.modules if m.startswith({banned!r})]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


COMPILER = ("icsnn_onnx.passes", "icsnn_onnx.converter", "icsnn_onnx.cli")


def test_runtime_alone_imports_neither_the_compiler_nor_graphsurgeon():
    _imports_none_of(
        "import icsnn_onnx.runtime, icsnn_onnx; icsnn_onnx.Session",
        ("onnx_graphsurgeon", *COMPILER, "icsnn_onnx.calibration.statistics", "icsnn_onnx.tuning"),
    )


def test_export_imports_no_compiler_and_nir_only_when_asked():
    _imports_none_of(
        "import icsnn_onnx.export, icsnn_onnx.export.rules",
        ("onnx_graphsurgeon", *COMPILER, "nir", "sinabs", "torch"),
    )


def test_every_public_name_resolves():
    import icsnn_onnx

    for name in icsnn_onnx.__all__:
        assert getattr(icsnn_onnx, name) is not None, name
    assert callable(icsnn_onnx.tune) and callable(icsnn_onnx.convert)
