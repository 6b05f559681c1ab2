from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, settings
from sklearn.datasets import load_digits

# Property tests: the same fixed set of examples on every run (CI), more with
# HYPOTHESIS_PROFILE=dev. Conversions take ~0.1-1 s, hence no per-example deadline.
settings.register_profile(
    "ci",
    max_examples=15,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as [N, 1, 8, 8] float32 in [0, 1], with labels."""
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), y.astype(np.int64)


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"


@pytest.fixture(scope="module")
def example_test_set() -> tuple[np.ndarray, np.ndarray]:
    """examples/digits/test.npz: 540 images and labels the example CNN was not trained on."""
    with np.load(EXAMPLE / "test.npz") as f:
        return f["x"], f["y"]


@pytest.fixture(scope="module")
def example_snn() -> bytes:
    """The example CNN converted at T=4 with defaults and per-step outputs."""
    from icsnn_onnx import convert

    return convert(EXAMPLE / "digits_cnn.onnx", EXAMPLE / "calib.npz", T=4, per_step=True).SerializeToString()


def run(model: onnx.ModelProto, x: np.ndarray | dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    """Run with plain ONNX Runtime, exactly as a user's deployment would."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = x if isinstance(x, dict) else {session.get_inputs()[0].name: x}
    return session.run(outputs, feeds)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean() / np.abs(b).mean())


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (not a package: imported by path, with the folder on
    ``sys.path`` while it loads, for the sibling modules it imports at the top)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def unrolled_kind(kind, T: int, shape: list[int]) -> onnx.ModelProto:
    """T steps of a neuron ``kind``'s ONNX function on inputs z0…z{T-1}: its initial states
    (``v0``, …) and parameters (``theta``, …) as scalar inputs, the step number as a constant
    where the kind counts steps; every out(t) and membrane v(t) as outputs."""
    from onnx import TensorProto, helper

    from icsnn_onnx.contract import NEURON_DOMAIN

    nodes, states = [], [f"{s}0" for s in kind.states]
    for t in range(1, T + 1):
        clock = []
        if kind.step_count:
            step = helper.make_tensor(f"step{t}", TensorProto.FLOAT, [], [float(t)])
            nodes.append(helper.make_node("Constant", [], [f"step{t}"], value=step))
            clock = [f"step{t}"]
        following = [f"{s}{t}" for s in kind.states]
        nodes.append(
            helper.make_node(
                kind.op_type,
                [*states, f"z{t - 1}", *kind.parameters, *clock],
                [f"out{t}", *following],
                domain=NEURON_DOMAIN,
            )
        )
        states = following
    floats = lambda name, dims: helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)  # noqa: E731
    scalars = [*kind.parameters, *(f"{s}0" for s in kind.states)]
    inputs = [floats(f"z{t}", shape) for t in range(T)] + [floats(n, []) for n in scalars]
    outputs = [floats(f"out{t}", shape) for t in range(1, T + 1)] + [
        floats(f"{kind.membrane}{t}", shape) for t in range(1, T + 1)
    ]
    model = helper.make_model(
        helper.make_graph(nodes, kind.op_type, inputs, outputs),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(NEURON_DOMAIN, 1)],
        functions=[kind.function_proto(21)],
        ir_version=10,
    )
    onnx.checker.check_model(model)
    return model
