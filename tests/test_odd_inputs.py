"""Odd but legitimate inputs work; the Python API raises only typed errors; writes are safe."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import icsnn_onnx
from icsnn_onnx.cli import main
from icsnn_onnx.contract import PER_STEP_OF_KEY
from tests import bad_models, models
from tests.conftest import run


def test_unicode_and_spaces_in_every_path(tmp_path, digits):
    folder = tmp_path / "dossier données ✓"
    folder.mkdir()
    onnx.save(models.cnn_bn(), folder / "modèle ann.onnx")
    np.savez(folder / "étalonnage.npz", x=digits[0][:64])
    out = folder / "réseau à impulsions.onnx"
    assert (
        main(
            [
                "convert",
                str(folder / "modèle ann.onnx"),
                "--calib",
                str(folder / "étalonnage.npz"),
                "-o",
                str(out),
                "-T",
                "4",
                "-q",
            ]
        )
        == 0
    )
    assert out.is_file()


def test_a_symlinked_model_converts_and_the_output_may_not_replace_its_target(tmp_path, digits, capsys):
    onnx.save(models.cnn_bn(), tmp_path / "real.onnx")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "real.onnx")
    np.save(tmp_path / "x.npy", digits[0][:32])
    args = ["convert", str(tmp_path / "link.onnx"), "--calib", str(tmp_path / "x.npy"), "-T", "4", "-q"]
    assert main([*args, "-o", str(tmp_path / "out.onnx")]) == 0
    before = (tmp_path / "real.onnx").read_bytes()
    assert main([*args, "-o", str(tmp_path / "real.onnx"), "--force"]) == 2
    assert (tmp_path / "real.onnx").read_bytes() == before
    assert "never overwritten" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.DOUBLE], ids=["float16", "float64"])
def test_other_float_types_convert_and_keep_their_type(digits, dtype):
    model = bad_models.typed(dtype)
    np_type = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    x = digits[0][:200].astype(np_type)
    for init in ("half", "calibrated"):  # Alg 2's segments and head run in the model's type too
        snn = icsnn_onnx.convert(model, x[:100], T=64, threshold="max", init=init)
        (ann,), (out,) = run(model, x[100:]), run(snn, x[100:])
        assert out.dtype == ann.dtype == np_type
        assert np.mean(out.argmax(1) == ann.argmax(1)) > 0.9


def test_names_that_look_generated_do_not_collide(digits):
    """A model whose tensors are called ``h1@1``, ``a1.sum`` and ``y_per_step``: every output
    keeps its name, per-step outputs take free names recorded in metadata."""
    model = bad_models.named_like_generated()
    x = digits[0][:100]
    snn = icsnn_onnx.convert(model, x, T=16, per_step=True)
    names = [o.name for o in snn.graph.output]
    assert names[:2] == ["y", "y_per_step"] and len(set(names)) == len(names) == 4
    meta = {p.key: p.value for p in snn.metadata_props}
    import json

    mapping = json.loads(meta[PER_STEP_OF_KEY])
    assert mapping["y"] != "y_per_step" and set(mapping) == {"y", "y_per_step"}
    produced = [o for n in snn.graph.node for o in n.output]
    assert len(produced) == len(set(produced))
    y, y2, *steps = run(snn, x)
    ann_y, _ = run(model, x)
    assert np.allclose(y2, 2 * y) and steps[0].shape == (16, 100, 10)
    assert np.mean(y.argmax(1) == ann_y.argmax(1)) > 0.9
    result = icsnn_onnx.evaluate(icsnn_onnx.Session(snn), icsnn_onnx.Dataset({"x": x}, digits[1][:100]))
    assert result.per_step_accuracy is not None and len(result.per_step_accuracy) == 16


def test_custom_operator_before_the_neurons_is_a_load_error_naming_it(digits):
    with pytest.raises(icsnn_onnx.IcsnnError, match="Swizzle"):
        icsnn_onnx.convert(bad_models.custom_op_before(), digits[0][:32], T=4)


def test_python_api_raises_typed_errors_only(tmp_path, digits):
    x = digits[0][:32]
    bad = [
        lambda: icsnn_onnx.convert(b"not a model", x),
        lambda: icsnn_onnx.convert(onnx.ModelProto(), x),
        lambda: icsnn_onnx.convert(tmp_path / "missing.onnx", x),
        lambda: icsnn_onnx.convert(models.cnn_bn(), np.zeros((4, 3), np.float32)),
        lambda: icsnn_onnx.convert(models.cnn_bn(), {"wrong": x}),
        lambda: icsnn_onnx.convert(models.cnn_bn(), x[:0]),
        lambda: icsnn_onnx.convert(bad_models.no_outputs(), x),
        lambda: icsnn_onnx.convert(bad_models.with_weight(np.nan), x),
        lambda: icsnn_onnx.convert(models.cnn_bn(), x, T=1_000_000),
        lambda: icsnn_onnx.inspect_model(b"\x00\x01"),
        lambda: icsnn_onnx.load_dataset(tmp_path / "missing.npz", []),
        lambda: icsnn_onnx.Session(tmp_path / "missing.onnx"),
        lambda: icsnn_onnx.Session(b"junk"),
    ]
    for call in bad:
        with pytest.raises(icsnn_onnx.IcsnnError):
            call()
    for call, error in [
        (lambda: icsnn_onnx.convert(models.cnn_bn(), x, T=0), ValueError),
        (lambda: icsnn_onnx.convert(models.cnn_bn(), x, init="third"), ValueError),
        (lambda: icsnn_onnx.convert(models.cnn_bn(), x, layout="loop", target="cpu"), ValueError),
        (lambda: icsnn_onnx.convert(models.cnn_bn(), x, bogus=1), TypeError),
        (lambda: icsnn_onnx.convert(42, x), TypeError),
        (
            lambda: icsnn_onnx.convert(models.cnn_bn(), x, options=icsnn_onnx.ConversionOptions(), T=4),
            TypeError,
        ),
    ]:
        with pytest.raises(error):
            call()


def _save_racing(args: tuple[str, int]) -> str:
    path, seed = args
    model = models.cnn_bn()
    model.doc_string = f"writer {seed}"
    try:
        icsnn_onnx.save_model(model, path)
        return "won"
    except icsnn_onnx.OutputExistsError:
        return "refused"


def test_two_writers_of_one_new_path_one_wins_the_other_is_refused(tmp_path):
    for round_ in range(5):
        path = str(tmp_path / f"race{round_}.onnx")
        with multiprocessing.get_context("fork").Pool(4) as pool:
            results = pool.map(_save_racing, [(path, k) for k in range(4)])
        assert sorted(results) == ["refused"] * 3 + ["won"], results
        assert onnx.load(path).doc_string.startswith("writer ")
    assert not list(tmp_path.glob(".*.tmp"))


def test_new_files_get_the_umask_mode_and_a_forced_one_keeps_its_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = icsnn_onnx.save_model(models.cnn_bn(), tmp_path / "new.onnx")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.chmod(path, 0o604)
        icsnn_onnx.save_model(models.cnn_bn(), path, force=True)
        assert stat.S_IMODE(path.stat().st_mode) == 0o604
    finally:
        os.umask(old)


def test_tune_writes_the_snn_at_the_chosen_T_with_its_options(tmp_path, digits, capsys):
    x, y = digits
    onnx.save(models.cnn_bn(), tmp_path / "ann.onnx")
    np.savez(tmp_path / "calib.npz", x=x[:200])
    np.savez(tmp_path / "valid.npz", x=x[200:500], y=y[200:500])
    out = tmp_path / "tuned.onnx"
    args = [
        "tune",
        str(tmp_path / "ann.onnx"),
        "--calib",
        str(tmp_path / "calib.npz"),
        "--data",
        str(tmp_path / "valid.npz"),
    ]
    code = main(
        [
            *args,
            "--max-drop",
            "2",
            "--layout",
            "loop",
            "--init",
            "zero",
            "--threshold",
            "max",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr()
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    chosen = int(capsys.readouterr().out.split("chosen T = ")[1].split()[0])
    assert meta["icsnn.T"] == str(chosen) and meta["icsnn.init"] == "zero"
    assert meta["icsnn.layout"] == ("loop" if chosen > 1 else "step-major")  # T = 1: nothing to loop


def test_every_option_round_trips_from_the_cli_to_metadata(tmp_path, digits):
    """CLI flags → ConversionOptions → the SNN's metadata, field by field (one source)."""
    import dataclasses

    from icsnn_onnx.cli import _options, _parser
    from icsnn_onnx.contract import metadata_key

    onnx.save(models.cnn_bn(), tmp_path / "ann.onnx")
    np.save(tmp_path / "x.npy", digits[0][:64])
    flags = [
        "convert",
        str(tmp_path / "ann.onnx"),
        "--calib",
        str(tmp_path / "x.npy"),
        "-T",
        "5",
        "--threshold",
        "p99.5",
        "--channel-wise",
        "--init",
        "zero",
        "--no-compensation",
        "--encoding",
        "rate",
        "--seed",
        "7",
        "--maxpool",
        "gate",
        "--per-step",
        "--layout",
        "time-batched",
        "--target",
        "portable",
        "--calib-samples",
        "50",
        "--batch-size",
        "16",
        "--levels",
        "3",
        "--no-bias-calibration",
    ]
    options = _options(_parser().parse_args(flags))
    expected = icsnn_onnx.ConversionOptions(
        T=5,
        threshold="p99.5",
        channel_wise=True,
        init="zero",
        compensation=False,
        encoding="rate",
        seed=7,
        maxpool="gate",
        per_step=True,
        layout="time-batched",
        target="portable",
        calib_samples=50,
        batch_size=16,
        levels=3,
        bias_calibration=False,
    )
    assert options == expected
    snn = icsnn_onnx.convert(tmp_path / "ann.onnx", tmp_path / "x.npy", options=options)
    meta = {p.key: p.value for p in snn.metadata_props}
    for field in dataclasses.fields(icsnn_onnx.ConversionOptions):
        if field.name != "batch_size":  # how calibration ran, not what was built
            assert meta[metadata_key(field.name)] == str(getattr(options, field.name)), field.name
    # An option left to be decided during conversion is recorded as the word for it.
    auto = icsnn_onnx.convert(tmp_path / "ann.onnx", tmp_path / "x.npy", T=2, init="half")
    assert {p.key: p.value for p in auto.metadata_props}[metadata_key("bias_calibration")] == "auto"


@pytest.mark.parametrize("layout", ["step-major", "loop"])
def test_tune_in_the_api_keeps_layout_and_target(tmp_path, digits, layout):
    x, y = digits
    result = icsnn_onnx.tune(
        models.cnn_bn(), x[:100], {"x": x[100:300], "y": y[100:300]}, layout=layout, max_T=8
    )
    assert result.accuracy_by_T


def test_runtime_reads_an_earlier_releases_per_step_metadata(digits):
    """Files from before the per-step map: the suffix rule on the listed outputs still works."""
    snn = icsnn_onnx.convert(models.cnn_bn(), digits[0][:64], T=4, per_step=True)
    kept = [p for p in snn.metadata_props if p.key != PER_STEP_OF_KEY]
    del snn.metadata_props[:]
    snn.metadata_props.extend(kept)
    result = icsnn_onnx.evaluate(
        icsnn_onnx.Session(snn), icsnn_onnx.Dataset({"x": digits[0][:50]}, digits[1][:50])
    )
    assert len(result.per_step_accuracy) == 4


def test_output_path_checks_do_not_need_the_file_to_be_valid(tmp_path):
    Path(tmp_path / "in.onnx").write_bytes(b"junk")
    with pytest.raises(icsnn_onnx.OutputPathError):
        icsnn_onnx.model_io.check_output(tmp_path / "in.onnx", True, [tmp_path / "in.onnx"])


def test_an_output_declared_with_the_wrong_shape_converts_and_declares_what_it_computes(caplog):
    """ddddocr's CRNN declares ``[1, seqlen]`` for a ``[seq, 1, classes]`` output: its reshape
    target is computed from shapes, so the source's checker never sees the rank. Once the SNN's
    constants fold, it does; the SNN keeps the output's name and dtype and declares its true shape."""
    h = onnx.helper
    w = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["z"], name="fc"),
        h.make_node("Relu", ["z"], ["a"], name="relu"),
        h.make_node("MatMul", ["a", "w2"], ["b"], name="fc2"),
        h.make_node("Shape", ["b"], ["shape"], name="shape"),
        h.make_node("Gather", ["shape", "zero"], ["n"], axis=0, name="batch"),
        h.make_node("Unsqueeze", ["n"], ["n1"], axes=[0], name="unsqueeze"),
        h.make_node("Concat", ["n1", "split"], ["target"], axis=0, name="target"),
        h.make_node("Reshape", ["b", "target"], ["y"], name="reshape"),
    ]
    inits = [
        onnx.numpy_helper.from_array(w, "w"),
        onnx.numpy_helper.from_array(np.eye(6, dtype=np.float32), "w2"),
        onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"),
        onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "split"),
    ]
    graph = h.make_graph(
        nodes,
        "misdeclared",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],  # computes [1, 2, 3]
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 12)])
    model.ir_version = 6
    onnx.checker.check_model(model, full_check=True)  # the source passes
    x = np.random.default_rng(1).uniform(0, 1, (32, 1, 4)).astype(np.float32)[:, 0]
    with caplog.at_level("WARNING"):
        snn = icsnn_onnx.convert(model, {"x": x[:1]}, T=4)
    assert "output 'y'" in caplog.text
    (output,) = snn.graph.output
    assert output.name == "y" and output.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [1, 2, 3]
    (y,) = run(snn, x[:1])
    assert y.shape == (1, 2, 3)
