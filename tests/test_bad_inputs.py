"""Adversarial inputs to every command: each is one clear line on stderr and exit 2, with no
traceback, nothing written and every input unchanged."""

from __future__ import annotations

import hashlib
import os
import signal
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import icsnn_onnx
from icsnn_onnx.cli import main
from tests import bad_models, models

Setup = Callable[[Path], list[str]]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, digits) -> Path:
    """A workspace: ann.onnx, snn.onnx (T=4), calib.npz, test.npz (labelled), x.npy."""
    d = tmp_path_factory.mktemp("ws")
    x, y = digits
    ann = models.cnn_bn()
    onnx.save(ann, d / "ann.onnx")
    np.savez(d / "calib.npz", x=x[:64])
    np.savez(d / "test.npz", x=x[64:128], y=y[64:128])
    np.save(d / "x.npy", x[:32])
    icsnn_onnx.save_model(icsnn_onnx.convert(ann, x[:64], T=4), d / "snn.onnx")
    return d


def _snapshot(root: Path) -> dict[str, str]:
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            state[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            state[str(path)] = "dir"
        else:
            state[str(path)] = "special"
    return state


def _case_dir(ws: Path, name: str) -> Path:
    d = ws / "cases" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def _model(name: str, build: Callable[[], onnx.ModelProto]) -> Setup:
    """A file holding a bad model (saved without the checker: some are invalid on purpose)."""

    def setup(ws: Path) -> str:
        path = _case_dir(ws, "models") / f"{name}.onnx"
        if not path.exists():
            path.write_bytes(build().SerializeToString())
        return str(path)

    return setup


def _file(name: str, content: bytes | Callable[[Path], None]) -> Callable[[Path], str]:
    def setup(ws: Path) -> str:
        path = _case_dir(ws, "files") / name
        if not path.exists() and not path.is_symlink():
            if callable(content):
                content(path)
            else:
                path.write_bytes(content)
        return str(path)

    return setup


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _zip_bomb(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((1, 1, 8, 8)))
        info = archive.infolist()[0]
    # Declare a terabyte for the member: what a bomb's central directory claims.
    data = bytearray(path.read_bytes())
    idx = data.rfind(b"PK\x01\x02")
    data[idx + 24 : idx + 28] = (0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert info.filename == "x.npy"


def _npz_claiming(shape: tuple[int, ...]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", _npy_header(shape))

    return write


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _truncated(ws: Path) -> str:
    path = _case_dir(ws, "files") / "truncated.onnx"
    if not path.exists():
        blob = (ws / "ann.onnx").read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    return str(path)


def _hardlink_of_ann(ws: Path) -> str:
    path = _case_dir(ws, "links") / "hardlink.onnx"
    if not path.exists():
        os.link(ws / "ann.onnx", path)
    return str(path)


def _symlink_to_ann(ws: Path) -> str:
    path = _case_dir(ws, "links") / "symlink.onnx"
    if not path.is_symlink():
        path.symlink_to(ws / "ann.onnx")
    return str(path)


def _external_data(kind: str) -> Callable[[Path], str]:
    """A model whose first weight lives in an external file: missing, absolute or outside."""

    def setup(ws: Path) -> str:
        d = _case_dir(ws, f"external_{kind}")
        path = d / "model.onnx"
        if path.exists():
            return str(path)
        model = bad_models.cnn()
        weight = model.graph.initializer[0]
        location = {"missing": "weights.bin", "absolute": str(d / "weights.bin"), "escape": "../weights.bin"}[
            kind
        ]
        raw = weight.raw_data or onnx.numpy_helper.to_array(weight).tobytes()
        if kind != "missing":
            (d / "weights.bin").write_bytes(raw)
            if kind == "escape":
                (d.parent / "weights.bin").write_bytes(raw)
        weight.ClearField("float_data")
        weight.ClearField("raw_data")
        weight.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
        path.write_bytes(model.SerializeToString())
        return str(path)

    return setup


def _npz(name: str, **arrays: np.ndarray) -> Callable[[Path], str]:
    return _file(name, lambda p: np.savez(p, **arrays))


def _npy(name: str, array: np.ndarray, allow_pickle: bool = False) -> Callable[[Path], str]:
    return _file(name, lambda p: np.save(p, array, allow_pickle=allow_pickle))


X = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)

BAD_MODELS: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing": (lambda ws: str(ws / "nope.onnx"), "no such file"),
    "directory": (lambda ws: str(_case_dir(ws, "a_directory.onnx")), "is a directory"),
    "empty": (_file("empty.onnx", b""), "not an ONNX model"),
    "random-bytes": (
        _file("random.onnx", bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8))),
        "not an ONNX model",
    ),
    "text": (_file("text.onnx", b'{"model": "not really"}\n'), "not an ONNX model"),
    "truncated": (_truncated, "not an ONNX model"),
    "npz-as-model": (lambda ws: str(ws / "calib.npz"), "not an ONNX model"),
    "fifo": (_file("pipe.onnx", _fifo), "not a regular file"),
    "dev-zero": (lambda ws: "/dev/zero", "not a regular file"),
    "dangling-symlink": (
        _file("dangling.onnx", lambda p: p.symlink_to(p.parent / "gone.onnx")),
        "no such file",
    ),
    "no-outputs": (_model("no_outputs", bad_models.no_outputs), "no outputs"),
    "external-missing": (_external_data("missing"), "missing"),
    "external-absolute": (_external_data("absolute"), "outside the model's folder"),
    "external-escape": (_external_data("escape"), "outside the model's folder"),
}

# Valid files a converter must refuse (a runtime may still run them).
BAD_WEIGHTS: dict[str, tuple[Callable[[Path], str], str]] = {
    "newer-opset": (_model("newer_opset", bad_models.newer_opset), "opset"),
    "nan-weight": (_model("nan", lambda: bad_models.with_weight(np.nan)), "NaN or Inf"),
    "inf-weight": (_model("inf", lambda: bad_models.with_weight(np.inf)), "NaN or Inf"),
}

# Models that load but cannot be converted: convert and inspect name the reason.
UNCONVERTIBLE: dict[str, tuple[Callable[[Path], str], str]] = {
    "custom-op-between": (_model("custom_between", bad_models.custom_op_between), "swizzle"),
    "random-between": (_model("random", bad_models.random_between), "the_noise"),
    "integer-only": (_model("integers", bad_models.integer_only), "no nonlinear activation"),
    "already-spiking": (lambda ws: str(ws / "snn.onnx"), "already a spiking network"),
    "huge-constant": (_model("huge_constant", bad_models.huge_constant), "memory available"),
    "static-batch-2^40": (_model("static_batch", lambda: bad_models.static_batch(2**40)), "memory available"),
    "training-batchnorm": (_model("training_bn", bad_models.training_batchnorm), "training mode"),
}

INSPECT_REFUSES = {"already-spiking", "huge-constant", "static-batch-2^40", "training-batchnorm"}

BAD_DATA: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing": (lambda ws: str(ws / "nope.npz"), "no such file"),
    "directory": (lambda ws: str(_case_dir(ws, "data_dir.npz")), "is a directory"),
    "fifo": (_file("pipe.npz", _fifo), "not a regular file"),
    "empty-file": (_file("empty.npz", b""), "cannot read"),
    "garbage": (_file("garbage.npz", b"PK\x03\x04 this is not a zip"), "cannot read"),
    "onnx-as-data": (lambda ws: str(ws / "ann.onnx"), "cannot read"),
    "pickled-npy": (_npy("pickled.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True), "pickled"),
    # .npy files are memory-mapped, not read: a header promising more than the file holds is refused
    "terabyte-header": (_file("huge.npy", _npy_header((2**20, 2**20, 8))), "promises"),
    "npz-member-claims-terabytes": (_file("huge.npz", _npz_claiming((2**20, 2**20, 8))), "memory available"),
    "zip-lying-about-sizes": (_file("bomb.npz", _zip_bomb), "cannot read"),
    "wrong-keys": (_npz("keys.npz", images=X), "expected 'x'"),
    "wrong-shape": (_npz("shape.npz", x=np.zeros((4, 1, 9, 9), np.float32)), "expects shape"),
    "wrong-rank": (_npy("rank.npy", np.zeros((4, 64), np.float32)), "expects shape"),
    "integers": (_npz("ints.npz", x=np.zeros((4, 1, 8, 8), np.int64)), "convert and scale"),
    "strings": (_npy("strings.npy", np.array(["a", "b"])), "expects"),
    "nan-values": (_npz("nan.npz", x=np.full((4, 1, 8, 8), np.nan, np.float32)), "NaN/Inf"),
    "inf-values": (_npz("inf.npz", x=np.full((4, 1, 8, 8), np.inf, np.float32)), "NaN/Inf"),
    "empty-array": (_npz("none.npz", x=np.zeros((0, 1, 8, 8), np.float32)), "empty"),
    "scalar": (_npy("scalar.npy", np.float32(3)), "expects shape"),
}

LABELS: dict[str, tuple[Callable[[Path], str], str]] = {
    "float-labels": (_npz("float_labels.npz", x=X, y=np.zeros(16, np.float32)), "integers"),
    "2d-labels": (_npz("2d_labels.npz", x=X, y=np.zeros((16, 1), np.int64)), "1-D"),
    "short-labels": (_npz("short_labels.npz", x=X, y=np.zeros(3, np.int64)), "entries"),
}


def _cases() -> list[tuple[str, Setup, str]]:
    cases: list[tuple[str, Setup, str]] = []

    def add(name: str, setup: Setup, fragment: str) -> None:
        cases.append((name, setup, fragment))

    for name, (model, fragment) in BAD_MODELS.items():
        add(
            f"convert/model/{name}",
            lambda ws, m=model: [
                "convert",
                m(ws),
                "--calib",
                str(ws / "calib.npz"),
                "-o",
                str(ws / "out.onnx"),
            ],
            fragment,
        )
        add(f"inspect/model/{name}", lambda ws, m=model: ["inspect", m(ws)], fragment)
        add(
            f"eval/model/{name}",
            lambda ws, m=model: ["eval", m(ws), "--data", str(ws / "test.npz")],
            fragment,
        )
        add(
            f"bench/snn/{name}",
            lambda ws, m=model: ["bench", str(ws / "ann.onnx"), m(ws), "--repeats", "1"],
            fragment,
        )
        add(
            f"report/snn/{name}",
            lambda ws, m=model: ["report", m(ws), "--data", str(ws / "x.npy")],
            fragment,
        )
        add(
            f"export/snn/{name}",
            lambda ws, m=model: ["export", m(ws), "--to", "nir", "-o", str(ws / "out.nir")],
            fragment,
        )
        add(
            f"diagnose/snn/{name}",
            lambda ws, m=model: [
                "diagnose",
                m(ws),
                "--ann",
                str(ws / "ann.onnx"),
                "--data",
                str(ws / "x.npy"),
            ],
            fragment,
        )
    for name, (model, fragment) in BAD_WEIGHTS.items():
        add(
            f"convert/model/{name}",
            lambda ws, m=model: [
                "convert",
                m(ws),
                "--calib",
                str(ws / "calib.npz"),
                "-o",
                str(ws / "out.onnx"),
            ],
            fragment,
        )
        add(f"inspect/model/{name}", lambda ws, m=model: ["inspect", m(ws)], fragment)
    for name in ("missing", "directory", "fifo", "truncated", "no-outputs"):
        model, fragment = BAD_MODELS[name]
        add(
            f"tune/model/{name}",
            lambda ws, m=model: [
                "tune",
                m(ws),
                "--data",
                str(ws / "test.npz"),
                "--calib",
                str(ws / "calib.npz"),
            ],
            fragment,
        )
        add(
            f"eval/ann/{name}",
            lambda ws, m=model: [
                "eval",
                str(ws / "snn.onnx"),
                "--data",
                str(ws / "test.npz"),
                "--ann",
                m(ws),
            ],
            fragment,
        )
        add(
            f"bench/ann/{name}",
            lambda ws, m=model: ["bench", m(ws), str(ws / "snn.onnx"), "--repeats", "1"],
            fragment,
        )
    for name, (model, fragment) in UNCONVERTIBLE.items():
        # No --calib: the model's own problem is found before data would be needed.
        add(
            f"convert/unconvertible/{name}",
            lambda ws, m=model: ["convert", m(ws), "-o", str(ws / "out.onnx")],
            fragment,
        )
        if name in INSPECT_REFUSES:  # inspect reports the others' blockers (exit 0)
            add(f"inspect/unconvertible/{name}", lambda ws, m=model: ["inspect", m(ws)], fragment)
    for name, (data, fragment) in BAD_DATA.items():
        add(
            f"convert/calib/{name}",
            lambda ws, d=data: [
                "convert",
                str(ws / "ann.onnx"),
                "--calib",
                d(ws),
                "-o",
                str(ws / "out.onnx"),
            ],
            fragment,
        )
        add(f"eval/data/{name}", lambda ws, d=data: ["eval", str(ws / "snn.onnx"), "--data", d(ws)], fragment)
        add(
            f"report/data/{name}",
            lambda ws, d=data: [
                "report",
                str(ws / "snn.onnx"),
                "--ann",
                str(ws / "ann.onnx"),
                "--data",
                d(ws),
            ],
            fragment,
        )
        add(
            f"diagnose/data/{name}",
            lambda ws, d=data: [
                "diagnose",
                str(ws / "snn.onnx"),
                "--ann",
                str(ws / "ann.onnx"),
                "--data",
                d(ws),
            ],
            fragment,
        )
    for name in ("missing", "pickled-npy", "wrong-shape", "nan-values"):
        data, fragment = BAD_DATA[name]
        add(
            f"tune/data/{name}",
            lambda ws, d=data: [
                "tune",
                str(ws / "ann.onnx"),
                "--calib",
                str(ws / "calib.npz"),
                "--data",
                d(ws),
            ],
            fragment,
        )
    for name, (data, fragment) in LABELS.items():
        add(
            f"eval/labels/{name}",
            lambda ws, d=data: ["eval", str(ws / "snn.onnx"), "--data", d(ws)],
            fragment,
        )
        add(
            f"tune/labels/{name}",
            lambda ws, d=data: [
                "tune",
                str(ws / "ann.onnx"),
                "--calib",
                str(ws / "calib.npz"),
                "--data",
                d(ws),
            ],
            fragment,
        )

    def convert(*extra: str, out: str = "out.onnx") -> Setup:
        return lambda ws: [
            "convert",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "-o",
            str(ws / out),
            *extra,
        ]

    for flags, fragment in [
        (("-T", "0"), "integer ≥ 1"),
        (("-T", "-3"), "integer ≥ 1"),
        (("-T", "abc"), "integer ≥ 1"),
        (("-T", "2.5"), "integer ≥ 1"),
        (("-T", "100000"), "--layout loop"),
        (("-T", "100000", "--layout", "loop", "--init", "calibrated"), "--init half"),
        (("--seed", "-1"), "integer ≥ 0"),
        (("--seed", "x"), "integer ≥ 0"),
        (("--threshold", "p0"), "percentile"),
        (("--threshold", "p101"), "percentile"),
        (("--threshold", "median"), "percentile"),
        (("--init", "third"), "invalid choice"),
        (("--maxpool", "biggest"), "invalid choice"),
        (("--encoding", "morse"), "invalid choice"),
        (("--layout", "spiral"), "invalid choice"),
        (("--target", "tpu"), "invalid choice"),
        (("--layout", "loop", "--target", "cpu"), "portable"),
        (("--calib-samples", "0"), "integer ≥ 1"),
        (("--batch-size", "0"), "integer ≥ 1"),
        (("--batch-size", "-64"), "integer ≥ 1"),
        (("--frobnicate",), "unrecognized"),
        (("--init", "calibrated", "--calib", "/nonexistent.npz"), "no such file"),
    ]:
        add("convert/flags/" + "_".join(flags), convert(*flags), fragment)
    add(
        "convert/no-calib-for-relu",
        lambda ws: ["convert", str(ws / "ann.onnx"), "-o", str(ws / "out.onnx")],
        "need calibration data",
    )
    add(
        "convert/multi-input-calib-x",
        lambda ws: [
            "convert",
            _model("two_inputs", models.two_inputs)(ws),
            "--calib",
            str(ws / "calib.npz"),
            "-o",
            str(ws / "out.onnx"),
        ],
        "keys",
    )

    # Output paths: refused before any work, inputs untouched.
    add(
        "convert/out/is-input-forced",
        lambda ws: [
            "convert",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "-o",
            str(ws / "ann.onnx"),
            "--force",
        ],
        "never overwritten",
    )
    add(
        "convert/out/is-input",
        lambda ws: [
            "convert",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "-o",
            str(ws / "ann.onnx"),
        ],
        "never overwritten",
    )
    add(
        "convert/out/hardlink-of-input",
        lambda ws: [
            "convert",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "-o",
            _hardlink_of_ann(ws),
            "--force",
        ],
        "never overwritten",
    )
    add(
        "convert/out/symlink-to-input",
        lambda ws: [
            "convert",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "-o",
            _symlink_to_ann(ws),
            "--force",
        ],
        "never overwritten",
    )
    add(
        "convert/out/input-through-dotdot",
        lambda ws: [
            "convert",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "-o",
            str(ws / "cases" / ".." / "ann.onnx"),
            "--force",
        ],
        "never overwritten",
    )
    add(
        "convert/out/is-calib",
        lambda ws: [
            "convert",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "-o",
            str(ws / "calib.npz"),
            "--force",
        ],
        "never overwritten",
    )
    add(
        "convert/out/exists",
        lambda ws: [
            "convert",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "-o",
            str(ws / "snn.onnx"),
        ],
        "--force",
    )
    add("convert/out/missing-dir", convert(out="no/such/dir/out.onnx"), "no such directory")
    add("convert/out/parent-is-file", convert(out="x.npy/out.onnx"), "not a directory")
    add(
        "convert/out/is-directory",
        lambda ws: [
            "convert",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "-o",
            str(_case_dir(ws, "outdir")),
            "--force",
        ],
        "is a directory",
    )
    add("convert/out/name-too-long", convert(out="n" * 300 + ".onnx"), "longer than")

    def tune(*extra: str) -> Setup:
        return lambda ws: [
            "tune",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "--data",
            str(ws / "test.npz"),
            *extra,
        ]

    for flags, fragment in [
        (("--max-drop", "-1"), "[0, 100]"),
        (("--max-drop", "nan"), "[0, 100]"),
        (("--max-drop", "inf"), "[0, 100]"),
        (("--max-drop", "101"), "[0, 100]"),
        (("--max-drop", "lots"), "[0, 100]"),
        (("--max-T", "0"), "integer ≥ 1"),
        (("--seed", "-5"), "integer ≥ 0"),
        (("--layout", "loop", "--target", "cpu"), "portable"),
        (("-o", "/no/such/dir/snn.onnx"), "no such directory"),
    ]:
        add("tune/flags/" + "_".join(flags), tune(*flags), fragment)
    add(
        "tune/out/is-input",
        lambda ws: [
            "tune",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "--data",
            str(ws / "test.npz"),
            "-o",
            str(ws / "test.npz"),
            "--force",
        ],
        "never overwritten",
    )
    add(
        "tune/unlabelled",
        lambda ws: [
            "tune",
            str(ws / "ann.onnx"),
            "--calib",
            str(ws / "calib.npz"),
            "--data",
            str(ws / "x.npy"),
        ],
        "labels",
    )

    def bench(*extra: str) -> Setup:
        return lambda ws: ["bench", str(ws / "ann.onnx"), str(ws / "snn.onnx"), *extra]

    for flags, fragment in [
        (("--batch", "0"), "integer ≥ 1"),
        (("--batch", "1000000000000"), "memory available"),
        (("--repeats", "0"), "integer ≥ 1"),
        (("--warmup", "-1"), "integer ≥ 0"),
        (("--provider", "tpu"), "invalid choice"),
        (("--provider", "cuda"), "CUDA"),
    ]:
        add("bench/flags/" + "_".join(flags), bench(*flags), fragment)
    add(
        "bench/ann-is-snn-input-mismatch",
        lambda ws: [
            "bench",
            _model("two_inputs", models.two_inputs)(ws),
            str(ws / "snn.onnx"),
            "--repeats",
            "1",
        ],
        "inputs",
    )
    add(
        "bench/ann-as-snn",
        lambda ws: ["bench", str(ws / "ann.onnx"), str(ws / "ann.onnx"), "--repeats", "1"],
        "not an icsnn-onnx SNN",
    )

    for flags, fragment in [
        (("--batch-size", "0"), "integer ≥ 1"),
        (("--output", "nothing"), "no output"),
        (("--provider", "cuda"), "CUDA"),
    ]:
        add(
            "eval/flags/" + "_".join(flags),
            lambda ws, f=flags: ["eval", str(ws / "snn.onnx"), "--data", str(ws / "test.npz"), *f],
            fragment,
        )
    add(
        "eval/unlabelled-without-ann",
        lambda ws: ["eval", str(ws / "snn.onnx"), "--data", str(ws / "x.npy")],
        "no labels",
    )
    add(
        "eval/ann-inputs-differ",
        lambda ws: [
            "eval",
            str(ws / "snn.onnx"),
            "--data",
            str(ws / "test.npz"),
            "--ann",
            _model("two_inputs", models.two_inputs)(ws),
        ],
        "inputs",
    )
    add(
        "eval/ann-input-shape-differs",
        lambda ws: [
            "eval",
            str(ws / "snn.onnx"),
            "--data",
            str(ws / "test.npz"),
            "--ann",
            _model("mlp", models.mlp_opset9)(ws),
        ],
        "input 'x'",
    )

    def diagnose(*extra: str) -> Setup:
        return lambda ws: [
            "diagnose",
            str(ws / "snn.onnx"),
            "--ann",
            str(ws / "ann.onnx"),
            "--data",
            str(ws / "x.npy"),
            *extra,
        ]

    for flags, fragment in [
        (("--steps", "0"), "positive integers"),
        (("--steps", "a,b"), "step counts"),
        (("--steps", "5"), "1..4"),
        (("--samples", "0"), "integer ≥ 1"),
    ]:
        add("diagnose/flags/" + "_".join(flags), diagnose(*flags), fragment)
    add(
        "diagnose/ann-inputs-differ",
        lambda ws: [
            "diagnose",
            str(ws / "snn.onnx"),
            "--ann",
            _model("two_inputs", models.two_inputs)(ws),
            "--data",
            str(ws / "x.npy"),
        ],
        "inputs",
    )

    def report(*extra: str) -> Setup:
        return lambda ws: ["report", str(ws / "snn.onnx"), "--data", str(ws / "x.npy"), *extra]

    for flags, fragment in [
        (("--e-ac", "-1"), "expected energy"),
        (("--e-mac", "nan"), "expected energy"),
        (("--samples", "0"), "integer ≥ 1"),
        (("--batch-size", "-3"), "integer ≥ 1"),
        (("--provider", "tpu"), "invalid choice"),
    ]:
        add("report/flags/" + "_".join(flags), report(*flags), fragment)
    add(
        "report/output-is-a-file",
        lambda ws: [*report()(ws), "-o", str(ws / "x.npy")],
        "not a directory",
    )
    add(
        "report/ann-is-not-an-snn",
        lambda ws: ["report", str(ws / "ann.onnx"), "--data", str(ws / "x.npy")],
        "no IF neuron",
    )
    add(
        "report/ann-inputs-differ",
        lambda ws: [*report()(ws), "--ann", _model("two_inputs", models.two_inputs)(ws)],
        "inputs",
    )

    def export(*extra: str) -> Setup:
        return lambda ws: ["export", str(ws / "snn.onnx"), "--to", "nir", "-o", str(ws / "out.nir"), *extra]

    def snn_file(name: str, **options: object) -> Callable[[Path], str]:
        def make(ws: Path) -> str:
            path = _case_dir(ws, f"export-{name}") / "snn.onnx"
            if not path.exists():
                x = np.load(ws / "calib.npz")["x"]
                snn = icsnn_onnx.convert(models.maxpool_cnn(), x, T=4, **options)
                icsnn_onnx.save_model(snn, path)
            return str(path)

        return make

    for flags, fragment in [
        (("--to", "onnx"), "invalid choice"),
        (("--thresholds", "one"), "invalid choice"),
        (("--initial-potential", "reset"), "invalid choice"),
        (("--groups", "some"), "invalid choice"),
    ]:
        add("export/flags/" + "_".join(flags), export(*flags), fragment)
    add("export/no-output", lambda ws: ["export", str(ws / "snn.onnx"), "--to", "nir"], "required")
    add("export/no-format", lambda ws: ["export", str(ws / "snn.onnx"), "-o", str(ws / "o.nir")], "required")
    add("export/output-exists", lambda ws: [*export()(ws)[:-1], str(ws / "x.npy")], "exists")
    add("export/output-is-the-input", lambda ws: [*export()(ws)[:-1], str(ws / "snn.onnx")], "snn.onnx")
    add("export/output-dir-missing", lambda ws: [*export()(ws)[:-1], str(ws / "no" / "o.nir")], "no")
    add(
        "export/ann-is-not-an-snn",
        lambda ws: ["export", str(ws / "ann.onnx"), "--to", "nir", "-o", str(ws / "o.nir")],
        "convert it first",
    )
    for name, options, fragment in [
        ("maxpool-gate", {"maxpool": "gate"}, "--maxpool decompose"),
        ("rate-coded", {"encoding": "rate"}, "rate input coding"),
    ]:
        make = snn_file(name, **options)
        add(
            f"export/{name}",
            lambda ws, make=make: [
                "export",
                make(ws),
                "--to",
                "nir",
                "-o",
                str(ws / "o.nir"),
            ],
            fragment,
        )
    add(
        "inspect/flags/maxpool",
        lambda ws: ["inspect", str(ws / "ann.onnx"), "--maxpool", "median"],
        "invalid choice",
    )
    add("no-command", lambda ws: [], "required")
    add("unknown-command", lambda ws: ["transmogrify", str(ws / "ann.onnx")], "invalid choice")
    return cases


CASES = _cases()


@pytest.mark.parametrize("name,setup,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(ws, capsys, name, setup, fragment):
    argv = setup(ws)
    before = _snapshot(ws)
    signal.alarm(120)  # a FIFO or /dev/zero must never hang a command
    try:
        code = _main_exit([*argv, "-q"])
    finally:
        signal.alarm(0)
    _, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert fragment.lower() in err.lower(), err
    assert _snapshot(ws) == before, "a failed command wrote or changed a file"
    assert not list(ws.rglob("*.tmp")), "a temporary file was left behind"


def _main_exit(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def test_the_suite_has_at_least_a_hundred_cases():
    assert len(CASES) >= 100, len(CASES)


@pytest.mark.parametrize("name", sorted(set(UNCONVERTIBLE) - INSPECT_REFUSES))
def test_inspect_reports_what_blocks_an_unconvertible_model(ws, capsys, name):
    setup, fragment = UNCONVERTIBLE[name]
    assert main(["inspect", setup(ws), "-q"]) == 0
    out = capsys.readouterr().out
    assert "blocking conversion" in out or "nothing to convert" in out
    assert fragment.lower() in out.lower()
