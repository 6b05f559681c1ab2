"""IC-SNN Alg 2 (--init calibrated): per-channel v(0) chosen on calibration data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import icsnn_onnx
from icsnn_onnx.contract import step_name
from icsnn_onnx.data import Dataset
from icsnn_onnx.neurons.if_neuron import IFParams, count_breakpoint, simulate
from icsnn_onnx.options import ConversionOptions
from icsnn_onnx.passes import PassManager
from icsnn_onnx.passes.activations import RecognizeActivations
from icsnn_onnx.passes.canonicalize import Canonicalize, import_model
from icsnn_onnx.passes.fold_batchnorm import FoldBatchNorm
from icsnn_onnx.passes.initial_potential import CalibrateInitialPotential, InitialPotential
from icsnn_onnx.passes.maxpool import LowerMaxPool
from icsnn_onnx.passes.thresholds import NormalizeThresholds
from icsnn_onnx.runtime.instrument import expose
from tests import models
from tests.conftest import run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"


@pytest.fixture(scope="module")
def example():
    test = np.load(EXAMPLE / "test.npz")
    return onnx.load(EXAMPLE / "digits_cnn.onnx"), np.load(EXAMPLE / "calib.npz")["x"], test["x"], test["y"]


def test_each_site_is_never_worse_than_half_init(example):
    model, calib, _, _ = example
    # Alg 2 against Alg 1 under a T-independent θ (mse already fits θ to the T levels).
    program = import_model(model, ConversionOptions(T=4, threshold="p99.99", init="calibrated"))
    data = Dataset({"image": calib})
    PassManager(
        [
            Canonicalize(),
            RecognizeActivations(),
            FoldBatchNorm(),
            NormalizeThresholds(data),
            InitialPotential(),
            CalibrateInitialPotential(data),
        ]
    )(program)
    report = program.init_calibration.per_site
    assert set(report) == set(program.sites)
    for site, (with_half, chosen) in report.items():
        assert chosen <= with_half, site
    assert any(chosen < 0.9 * with_half for with_half, chosen in report.values())
    for name, v0 in program.v_init.items():
        theta = program.thresholds[name]
        assert v0.ndim == 3 and v0.shape[1:] == (1, 1)  # one value per channel
        assert np.all(v0 >= 0) and np.all(v0 < theta)


def test_calibrated_beats_half_end_to_end_at_small_T(example):
    model, calib, test_x, test_y = example
    (ann,) = run(model, test_x)
    results = {}
    for init in ("half", "calibrated"):
        snn = icsnn_onnx.convert(model, calib, T=4, init=init, threshold="p99.99")
        (out,) = run(snn, test_x)
        results[init] = (float(((out - ann) ** 2).mean()), float((out.argmax(1) == test_y).mean()))
    assert results["calibrated"][0] < 0.7 * results["half"][0]
    assert results["calibrated"][1] >= results["half"][1]


def test_calibrated_init_is_recorded_and_needs_data(example, tmp_path):
    model, calib, _, _ = example
    snn = icsnn_onnx.convert(model, calib[:64], T=3, init="calibrated")
    path = icsnn_onnx.save_model(snn, tmp_path / "snn.onnx")
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["icsnn.init"] == "calibrated" and meta["icsnn.init_candidates"] == "16"
    clipped = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
            [
                onnx.numpy_helper.from_array(np.float32(0), "lo"),
                onnx.numpy_helper.from_array(np.float32(1), "hi"),
            ],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 21)],
        ir_version=10,
    )
    with pytest.raises(icsnn_onnx.CalibrationError, match="--init calibrated needs calibration data"):
        icsnn_onnx.convert(clipped, None, T=4, init="calibrated")


def test_candidates_must_include_half():
    with pytest.raises(ValueError, match="even"):
        CalibrateInitialPotential(None, candidates=5)


@pytest.mark.parametrize("name", sorted(__import__("tests.test_conversion", fromlist=["BUILDERS"]).BUILDERS))
def test_calibrated_init_on_every_graph_family(digits, name):
    """Alg 2 runs on every test graph and never makes the output error on its calibration data
    worse than Alg 1 (falling back to θ/2 where the layer-wise choice would)."""
    from tests.test_conversion import BUILDERS

    model, x = BUILDERS[name](digits)
    calib = x[:128]
    (ann,) = run(model, calib)
    errors = {}
    for init in ("half", "calibrated"):
        (out,) = run(icsnn_onnx.convert(model, calib, T=4, init=init), calib)
        assert np.all(np.isfinite(out))
        errors[init] = float(((out - ann) ** 2).mean())
    assert errors["calibrated"] <= errors["half"] * (1 + 1e-6), errors


def test_calibrated_init_on_sklearn_and_multi_input(digits):
    from tests import models

    x, y = digits
    flat = x.reshape(len(x), -1)
    mlp = models.sklearn_mlp(flat[:600], y[:600])
    snn = icsnn_onnx.convert(mlp, flat[:128], T=4, init="calibrated")
    _label, proba = run(snn, flat[600:700])
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    feats = np.random.default_rng(0).normal(size=(128, 5)).astype(np.float32)
    snn = icsnn_onnx.convert(
        models.two_inputs(), {"image": x[:128], "features": feats}, T=4, init="calibrated"
    )
    (out,) = run(snn, {"image": x[:16], "features": feats[:16]})
    assert out.shape == (16, 10)


@pytest.mark.parametrize(
    ("build", "T"), [(models.residual_block, 4), (models.maxpool_cnn, 3), (models.concat_block, 4)]
)
def test_each_potential_is_the_best_for_the_currents_the_finished_snn_feeds_it(build, T, digits):
    """Alg 2 in one pass reads each site's currents from stored upstream spikes; they must be the
    currents of the SNN it finally builds, so each chosen v(0) is the best candidate for them.
    Bias calibration off: its δ, folded into a layer's bias, rounds differently in float32 from
    the stored currents plus δ, which moves spikes at exact ties (tests/test_bias_calibration.py)."""
    K = 16
    options = ConversionOptions(
        T=T, threshold="p99.99", channel_wise=True, init="calibrated", bias_calibration=False
    )
    program = import_model(build(), options)
    data = Dataset({"x": digits[0][:120]})
    passes = [
        Canonicalize(),
        RecognizeActivations(),
        FoldBatchNorm(),
        LowerMaxPool(),
        NormalizeThresholds(data),
    ]
    PassManager([*passes, InitialPotential()])(program)
    ann = program.to_onnx()
    calibrate = CalibrateInitialPotential(data, candidates=K)
    PassManager([calibrate])(program)
    chosen_v = program.init_calibration.calibrated  # (what the SNN holds unless θ/2 did better)
    sites = list(program.sites.values())
    final = calibrate._trial_snn(program, chosen_v)
    produced = {o for n in final.graph.node for o in n.output}
    currents = {
        s.name: [step_name(s.input, t) for t in range(1, T + 1)]
        if step_name(s.input, 1) in produced
        else [s.input]
        for s in sites
    }
    names = [c for site_currents in currents.values() for c in site_currents]
    z_all = dict(zip(names, run(expose(final, names), data.inputs["x"]), strict=True))
    a_all = dict(
        zip(
            [s.input for s in sites],
            run(expose(ann, [s.input for s in sites]), data.inputs["x"]),
            strict=True,
        )
    )
    for site in sites:
        theta = program.thresholds[site.name]
        z = np.stack([z_all[c] for c in currents[site.name]])
        target = site.transfer(a_all[site.input].astype(np.float64))
        errors = _simulated_errors(np.broadcast_to(z, (T, *z.shape[1:])), target, theta, K)
        best = errors.min(axis=0)
        chosen = np.round(np.asarray(chosen_v[site.name]).reshape(-1) / np.asarray(theta).reshape(-1) * K)
        chosen = np.broadcast_to(chosen, best.shape).astype(int)
        np.testing.assert_allclose(errors[chosen, np.arange(len(best))], best, rtol=1e-12, err_msg=site.name)


def _simulated_errors(z: np.ndarray, target: np.ndarray, theta: np.ndarray, K: int) -> np.ndarray:
    """``[K, C]``: every candidate v(0) = k·θ/K simulated over T steps by the IF reference and
    scored against ``target`` per channel (axis 1) — what Alg 2's one-run scoring must equal."""
    theta = np.asarray(theta, np.float64)
    axes = tuple(a for a in range(target.ndim) if a != 1) if target.ndim >= 2 else None
    rows = []
    for k in range(K):
        params = IFParams(theta.astype(z.dtype), (theta * k / K).astype(z.dtype))
        rate = theta * simulate(z, params).spikes.sum(axis=0) / len(z)
        rows.append(np.sum((rate - target) ** 2, axis=axes))
    return np.stack(rows).reshape(K, -1)


@pytest.mark.parametrize("T", [1, 2, 4, 7])
@pytest.mark.parametrize("shape", [(5, 3, 4, 4), (40, 6), (30,)])
def test_one_run_scoring_equals_simulating_every_candidate(T, shape):
    """Alg 2 scores its K candidates from one IF run (``neuron.count_breakpoint``): the errors are
    those of K separate simulations, for time-varying, constant (first-layer) and rank-1 currents,
    with per-channel and per-layer thresholds."""
    rng = np.random.default_rng(T)
    channels = shape[1] if len(shape) >= 2 else 1
    per_channel = (rng.uniform(0.3, 2.0, channels) * np.ones(1)).reshape([channels] + [1] * (len(shape) - 2))
    K = 8
    calibrate = CalibrateInitialPotential(None, candidates=K)
    for theta in (per_channel if len(shape) >= 2 else np.float64(0.9), np.float64(0.9)):
        target = np.maximum(rng.standard_normal(shape), 0)
        for z in (
            rng.standard_normal((T, *shape)).astype(np.float32),
            rng.standard_normal((1, *shape)).astype(np.float32),  # constant over time
            np.round(rng.standard_normal((T, *shape)) * 8).astype(np.float32) / 8,  # ties on a grid
        ):
            steps = np.broadcast_to(z, (T, *shape))
            count, v_star = count_breakpoint(
                steps, np.asarray(theta, np.float32).reshape(-1, *[1] * (len(shape) - 2))
            )
            got = calibrate._channel_errors(count, v_star, target, theta, T)
            expected = _simulated_errors(np.broadcast_to(z, (T, *shape)), target, theta, K)
            np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), rtol=1e-9, atol=1e-9)


def test_calibrated_init_on_a_graph_with_a_fixed_batch_of_one(digits):
    """Old model-zoo graphs fix the batch to 1: the segments run one sample at a time."""
    dynamic = models.residual_block()
    fixed = onnx.ModelProto()
    fixed.CopyFrom(dynamic)
    for value in (*fixed.graph.input, *fixed.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    calib = digits[0][:24]
    expected = icsnn_onnx.convert(dynamic, calib, T=3, init="calibrated")
    got = icsnn_onnx.convert(fixed, calib, T=3, init="calibrated")
    potentials = [
        {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer if t.name.endswith(".v_init")}
        for m in (expected, got)
    ]
    assert potentials[0].keys() == potentials[1].keys()
    for name, v in potentials[0].items():
        np.testing.assert_array_equal(potentials[1][name], v, err_msg=name)


def test_a_fixed_batch_of_one_runs_the_per_sample_segments_on_whole_batches(digits, monkeypatch):
    """The zoo's batch-1 graphs: segments that provably compute sample by sample run 16 samples
    at a time, the head with its Reshape to a hard-coded [1, 8] one at a time (it would mix
    samples), and the potentials are those of one sample at a time everywhere."""
    from icsnn_onnx.passes import one_pass

    model = models.residual_block()
    flatten = next(n for n in model.graph.node if n.op_type == "Flatten")
    flatten.op_type, flatten.input[:] = "Reshape", [flatten.input[0], "batch_one"]
    del flatten.attribute[:]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 8], np.int64), "batch_one"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    calib = digits[0][:40]
    sizes: dict[str, set[int]] = {}
    real = one_pass.run_batches

    def spy(segment, feeds, outputs, threads=None):
        def seen(feeds):
            for feed in feeds:
                sizes.setdefault(",".join(sorted(outputs)), set()).add(len(next(iter(feed.values()))))
                yield feed

        return real(segment, seen(feeds), outputs, threads)

    monkeypatch.setattr(one_pass, "run_batches", spy)
    batched = icsnn_onnx.convert(model, calib, T=3, init="calibrated", batch_size=16)
    heads = {k for k in sizes if k.startswith("y") or "icsnn.ann:y" in k}
    assert heads and all(sizes[k] == {1} for k in heads)  # the Reshape's head: one at a time
    assert all(sizes[k] == {16, 8} for k in sizes.keys() - heads)  # 40 = 16 + 16 + 8
    one_by_one = icsnn_onnx.convert(model, calib, T=3, init="calibrated", batch_size=1)
    assert batched.SerializeToString() == one_by_one.SerializeToString()


def test_per_sample_refuses_what_could_mix_samples():
    from onnx import helper

    from icsnn_onnx.calibration.segments import per_sample

    def model(*nodes, constants=("w",)):
        graph = helper.make_graph(
            list(nodes),
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            initializer=[onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), c) for c in constants],
        )
        return helper.make_model(graph)

    assert per_sample(
        model(helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"]))
    )
    assert per_sample(model(helper.make_node("Concat", ["x", "x"], ["y"], axis=1)))
    assert not per_sample(model(helper.make_node("Concat", ["x", "x"], ["y"], axis=0)))
    assert not per_sample(model(helper.make_node("Concat", ["x", "x"], ["y"], axis=-1)))  # rank unknown
    assert not per_sample(model(helper.make_node("Reshape", ["x", "w"], ["y"])))
    assert not per_sample(model(helper.make_node("MatMul", ["x", "x"], ["y"]), constants=()))
    assert not per_sample(model(helper.make_node("Gemm", ["x", "w"], ["y"], transA=1)))
    assert not per_sample(model(helper.make_node("Flatten", ["x"], ["y"], axis=0)))


def test_calibrated_init_spilled_to_disk_equals_in_memory(digits, monkeypatch):
    """The store keeps Alg 2's tensors in memory up to its budget and on disk beyond: with no
    budget at all (every tensor memory-mapped) the potentials and the output check are the same."""
    from icsnn_onnx.calibration.segments import SpillStore
    from icsnn_onnx.passes import initial_potential

    model, calib = models.routes_net(), digits[0][:40]
    in_memory = icsnn_onnx.convert(model, calib, T=4, init="calibrated", batch_size=16)
    monkeypatch.setattr(initial_potential, "SpillStore", lambda: SpillStore(memory_bytes=0))
    on_disk = icsnn_onnx.convert(model, calib, T=4, init="calibrated", batch_size=16)
    for a, b in zip(in_memory.graph.initializer, on_disk.graph.initializer, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(
            onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b), err_msg=a.name
        )


@pytest.mark.parametrize("name", ["example", "torch_inverted_residual"])
def test_the_output_check_measures_the_snns_that_are_written(example, digits, name, monkeypatch):
    """Alg 2's output check (θ/2 kept if it does better) sees the files a user gets: its errors are
    those of the θ/2 and the calibrated conversions (in the trial's form: portable, step-major),
    run as a user runs them — though its reference runs on a thread and the ANN's outputs come
    from the ANN's head on stored activations."""
    if name == "example":
        model, calib = example[0], example[1][:64]
    else:
        model, calib = (
            models.torch_export(models.torch_inverted_residual(), digits[0][:2], dynamo=False),
            digits[0][:64],
        )
    found = {}
    call = CalibrateInitialPotential.call

    def keep(self, program):
        result = call(self, program)
        if program.init_calibration is not None:  # (the θ/2 conversion skips Alg 2)
            found["errors"] = program.init_calibration.output_errors
        return result

    monkeypatch.setattr(CalibrateInitialPotential, "call", keep)
    form = {"T": 4, "target": "portable", "layout": "step-major"}
    (ann,) = run(model, calib)
    errors = []
    for init in ("half", "calibrated"):
        (out,) = run(icsnn_onnx.convert(model, calib, init=init, **form), calib)
        errors.append(float(np.mean((out - ann.astype(np.float64)) ** 2)))
    np.testing.assert_allclose(found["errors"], errors, rtol=1e-4)
