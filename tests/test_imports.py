"""A deployment that only runs SNN files imports no compiler."""

from __future__ import annotations

import subprocess
import sys


def test_runtime_alone_imports_neither_the_compiler_nor_graphsurgeon():
    code = (
        "import sys, icsnn_onnx.runtime, icsnn_onnx; icsnn_onnx.Session; "
        "bad = [m for m in sys.modules if m.startswith(('onnx_graphsurgeon', 'icsnn_onnx.passes', "
        "'icsnn_onnx.converter', 'icsnn_onnx.calibration', 'icsnn_onnx.tuning', 'icsnn_onnx.cli'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_export_imports_no_compiler_and_nir_only_when_asked():
    code = (
        "import sys, icsnn_onnx.export, icsnn_onnx.export.rules; "
        "bad = [m for m in sys.modules if m.startswith(('onnx_graphsurgeon', 'icsnn_onnx.passes', "
        "'icsnn_onnx.converter', 'icsnn_onnx.cli', 'nir', 'sinabs', 'torch'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_public_name_resolves():
    import icsnn_onnx

    for name in icsnn_onnx.__all__:
        assert getattr(icsnn_onnx, name) is not None, name
    assert callable(icsnn_onnx.tune) and callable(icsnn_onnx.convert)
