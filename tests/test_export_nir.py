"""NIR export: graphs round-trip through an independent consumer (sinabs) to the SNN's outputs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from onnx import helper

import icsnn_onnx
from icsnn_onnx.cli import main
from icsnn_onnx.errors import ExportError, OptionError, UnexportableError
from icsnn_onnx.export import NirOptions, export_nir, to_nir
from tests import models
from tests.conftest import run

nir = pytest.importorskip("nir")
pytest.importorskip("sinabs")
from icsnn_onnx.export.sinabs_run import run_sinabs  # noqa: E402  (needs sinabs)

T = 5


def _routes_net(count_include_pad: int = 1):
    """The report's routes net; its padded AveragePool counts the zeros (as torch exports it)."""
    model = models.routes_net()
    for node in model.graph.node:
        if node.op_type == "AveragePool":
            node.attribute.append(helper.make_attribute("count_include_pad", count_include_pad))
    return model


def _resnet_stem():
    """A ResNet stem: Conv-BN-ReLU, MaxPool(3, stride 2, padding 1) (decomposed: Pad, then
    overlapping strided slices that stop before the border), a Conv, a global average, Linear."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


NETS = {
    "routes": lambda d: _routes_net(),  # padded AvgPool, strided Conv, Add into a membrane, Concat
    "residual": lambda d: models.residual_block(),  # GlobalAveragePool, MatMul + Add head
    "concat": lambda d: models.concat_block(),  # Concat of three sites, ReLU6 (Clip) site
    "maxpool": lambda d: models.maxpool_cnn(),
    "resnet-stem": lambda d: models.torch_export(_resnet_stem(), d[0][:2], dynamo=False),
    "torch-cnn": lambda d: models.torch_export(models.torch_cnn(), d[0][:2], dynamo=False),
    "densenet": lambda d: models.torch_export(models.torch_densenet_block(), d[0][:2], dynamo=False),
    "inverted-residual": lambda d: models.torch_export(
        models.torch_inverted_residual(), d[0][:2], dynamo=True
    ),
}


def _exact_snn(model, digits, **options):
    """An SNN whose semantics NIR expresses exactly: v(0) = 0, read-out = mean of the spikes' head."""
    return icsnn_onnx.convert(model, digits[0][:200], T=T, init="zero", compensation=False, **options)


@pytest.mark.parametrize("net", list(NETS))
def test_sinabs_runs_the_export_as_the_snn(net, digits):
    snn = _exact_snn(NETS[net](digits), digits)
    x = digits[0][200:264]
    expected = run(snn, x)[0]
    exported = to_nir(snn, NirOptions(thresholds="keep"))
    got = run_sinabs(exported.graph, x, T)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert exported.sites == len([n for n in exported.graph.nodes.values() if isinstance(n, nir.IF)])


def test_unit_thresholds_fire_the_same_spikes(digits):
    """θ folded into the weights (every threshold 1): the same spikes but where rounding moves a
    membrane across its threshold, so the outputs agree up to rare single flips."""
    snn = _exact_snn(_routes_net(), digits)
    x = digits[0][200:264]
    exported = to_nir(snn)
    assert all(np.all(n.v_threshold == 1) for n in exported.graph.nodes.values() if isinstance(n, nir.IF))
    got, expected = run_sinabs(exported.graph, x, T), run(snn, x)[0]
    close = np.isclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()).all(axis=1)
    assert close.mean() >= 0.95
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.98


@pytest.mark.parametrize("layout", ["time-batched", "loop"])
def test_every_layout_exports_the_same_graph(layout, digits):
    model = _routes_net()
    plain = to_nir(_exact_snn(model, digits))
    other = to_nir(_exact_snn(model, digits, layout=layout))
    assert [type(n).__name__ for n in plain.graph.nodes.values()] == [
        type(n).__name__ for n in other.graph.nodes.values()
    ]
    assert len(plain.graph.edges) == len(other.graph.edges)
    for a, b in zip(plain.graph.nodes.values(), other.graph.nodes.values(), strict=True):
        for field in ("weight", "bias", "v_threshold"):
            if hasattr(a, field):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def _first_layer_net():
    """One site, on the input: its current is the same at every step (direct coding)."""
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["z1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("Flatten", ["a1"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    return models.make_model(
        nodes, {"c1": models._w(4, 1, 3, 3), "g": models._w(10, 4 * 8 * 8)}, ["N", 1, 8, 8], ["N", 10]
    )


@pytest.mark.parametrize("init", ["half", "calibrated"])
def test_initial_potential_as_a_bias_is_exact_for_a_constant_current(init, digits):
    """v(0) + T·z and T·(z + v(0)/T) give the same spike count (docs/method.md §12)."""
    snn = icsnn_onnx.convert(
        _first_layer_net(), digits[0][:200], T=T, init=init, compensation=False, channel_wise=True
    )
    x = digits[0][200:264]
    expected = run(snn, x)[0]
    got = run_sinabs(to_nir(snn, NirOptions(thresholds="keep")).graph, x, T)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    dropped = run_sinabs(to_nir(snn, NirOptions(thresholds="keep", initial_potential="none")).graph, x, T)
    assert not np.allclose(dropped, expected, rtol=1e-3)


def test_defaults_export_with_notes_of_what_differs(digits, caplog):
    snn = icsnn_onnx.convert(models.residual_block(), digits[0][:200], T=T)
    with caplog.at_level("WARNING", logger="icsnn_onnx.export"):
        exported = to_nir(snn)
    assert any("compensated read-out" in n for n in exported.notes)
    assert any("v(0)/T" in n for n in exported.notes)
    assert {r.getMessage() for r in caplog.records} >= set(exported.notes)
    meta = exported.graph.metadata
    assert meta["icsnn.T"] == str(T) and "reset by subtraction" in meta["semantics"]


def test_write_reads_back_and_never_replaces_without_force(tmp_path, digits):
    snn = _exact_snn(models.concat_block(), digits)
    path = tmp_path / "m.nir"
    exported = export_nir(snn, path)
    back = nir.read(path)
    assert set(back.nodes) == set(exported.graph.nodes)
    x = digits[0][200:232]
    np.testing.assert_allclose(run_sinabs(back, x, T), run_sinabs(exported.graph, x, T), rtol=1e-6, atol=1e-6)
    with pytest.raises(icsnn_onnx.OutputExistsError):
        export_nir(snn, path)
    export_nir(snn, path, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.nir"]  # no temporary file left


def _gate_and_softmax_net():
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["z1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("MaxPool", ["a1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "c2"], ["z2"]),
        helper.make_node("Relu", ["z2"], ["a2"]),
        helper.make_node("Flatten", ["a2"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["l"], transB=1),
        helper.make_node("Softmax", ["l"], ["y"], axis=1, name="softmax"),
    ]
    weights = {"c1": models._w(4, 1, 3, 3), "c2": models._w(4, 4, 1, 1), "g": models._w(10, 4 * 4 * 4)}
    return models.make_model(nodes, weights, ["N", 1, 8, 8], ["N", 10])


def test_what_nir_cannot_say_is_refused_all_at_once(tmp_path, digits):
    snn = icsnn_onnx.convert(_gate_and_softmax_net(), digits[0][:100], T=T, maxpool="gate")
    path = tmp_path / "m.nir"
    with pytest.raises(UnexportableError) as err:
        export_nir(snn, path)
    ops = {n.op_type for n in err.value.nodes}
    assert {"Softmax"} <= ops and ops & {"MaxPool", "Gather", "GatherElements"}
    assert "--maxpool decompose" in str(err.value)
    assert not path.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"encoding": "rate"}, "rate input coding"),
        ({"target": "cpu", "channel_wise": True}, "--target portable"),
    ],
)
def test_encoders_and_channelwise_neurons_are_refused(options, expected, digits):
    model = models.torch_export(models.torch_cnn(), digits[0][:2], dynamo=False)
    snn = icsnn_onnx.convert(model, digits[0][:100], T=T, **options)
    if options.get("target") == "cpu" and not any(n.op_type == "IFNeuronChannelwise" for n in snn.graph.node):
        pytest.skip("no site fits the channelwise neuron here")
    with pytest.raises(UnexportableError, match=expected):
        to_nir(snn)


def test_padded_average_over_valid_cells_only_is_refused(digits):
    """ONNX's default count_include_pad=0 divides border windows by fewer cells: a per-neuron
    scale, which NIR's Conv2d and SumPool2d cannot carry into the next membrane."""
    with pytest.raises(UnexportableError, match="count_include_pad=0"):
        to_nir(_exact_snn(_routes_net(count_include_pad=0), digits))


def test_an_ann_is_not_exported(digits):
    with pytest.raises(ExportError, match="convert it first"):
        to_nir(models.residual_block())


def test_options_are_validated():
    with pytest.raises(OptionError, match="thresholds"):
        NirOptions(thresholds="one")
    with pytest.raises(OptionError, match="initial_potential"):
        NirOptions(initial_potential="reset")


def test_cli_export(tmp_path, digits, capsys, caplog):
    snn = tmp_path / "s.onnx"
    icsnn_onnx.save_model(icsnn_onnx.convert(models.residual_block(), digits[0][:100], T=T), snn)
    out = tmp_path / "m.nir"
    assert main(["export", str(snn), "--to", "nir", "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert str(out) in printed.out and "1 Output" in printed.out
    assert any("v(0)/T" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert isinstance(nir.read(out), nir.NIRGraph)
    assert main(["export", str(snn), "--to", "nir", "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(snn), "--to", "nir", "-o", str(out), "--force", "--thresholds", "keep"]) == 0


def test_a_maxpool_on_the_read_out_is_refused(digits):
    """After the last neurons a MaxPool acts once on the read-out; NIR would take the maximum at
    every step, and the mean of maxima is not the maximum of means."""
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["z1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z1"], ["a1"]),
        helper.make_node("MaxPool", ["a1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    model = models.make_model(
        nodes, {"c1": models._w(4, 1, 3, 3), "g": models._w(10, 4 * 4 * 4)}, ["N", 1, 8, 8], ["N", 10]
    )
    with pytest.raises(UnexportableError, match="after the last neurons") as err:
        to_nir(_exact_snn(model, digits))
    assert [n.op_type for n in err.value.nodes] == ["MaxPool"]


def test_without_the_nir_package_the_error_names_the_extra(monkeypatch, digits):
    monkeypatch.setitem(sys.modules, "nir", None)  # `import nir` now raises ImportError
    with pytest.raises(ExportError, match=r"icsnn-onnx\[nir\]"):
        to_nir(_exact_snn(models.residual_block(), digits))
