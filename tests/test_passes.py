"""Each pass: what it does, and its pre/postconditions; the pass manager's error handling."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from icsnn_onnx.errors import ConversionError, IcsnnError, PassError, PostconditionError, PreconditionError
from icsnn_onnx.options import ConversionOptions
from icsnn_onnx.passes import Pass, PassManager, PassResult
from icsnn_onnx.passes.activations import RecognizeActivations
from icsnn_onnx.passes.canonicalize import CANONICAL_OPSET, Canonicalize, import_model
from icsnn_onnx.passes.fold_batchnorm import FoldBatchNorm
from icsnn_onnx.passes.initial_potential import InitialPotential
from icsnn_onnx.passes.insert_neurons import InsertNeurons
from icsnn_onnx.passes.program import Program
from icsnn_onnx.passes.thresholds import NormalizeThresholds
from tests import models
from tests.conftest import run

S = lambda v: np.asarray(v, np.float32)  # noqa: E731


def _program(model: onnx.ModelProto) -> Program:
    return import_model(model, ConversionOptions(init="half"))  # passes run alone: init resolved


def _ops(program: Program) -> list[str]:
    return [n.op for n in program.graph.nodes]


# --- pass manager -------------------------------------------------------------------------


class _Boom(Pass):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def call(self, program: Program) -> PassResult:
        raise self.error


def test_manager_wraps_unexpected_errors_naming_the_pass():
    program = _program(models.cnn_bn())
    with pytest.raises(PassError, match="pass '_Boom' failed: 'bug'") as info:
        PassManager([Canonicalize(), _Boom(KeyError("bug"))])(program)
    assert isinstance(info.value.__cause__, KeyError)
    assert not isinstance(info.value, IcsnnError)  # a bug is not a user error (exit 1, not 2)


def test_manager_keeps_user_errors_typed_and_notes_the_pass():
    program = _program(models.cnn_bn())
    with pytest.raises(ConversionError) as info:
        PassManager([_Boom(ConversionError("bad model"))])(program)
    assert "raised in pass _Boom" in info.value.__notes__


def test_manager_reports_modification():
    program = _program(models.cnn_bn())
    assert PassManager([Canonicalize(), RecognizeActivations(), FoldBatchNorm()])(program).modified
    assert not PassManager([RecognizeActivations()])(program).modified


# --- canonicalize -------------------------------------------------------------------------


def test_opset9_initializers_as_inputs_become_constants():
    program = _program(models.mlp_opset9())
    assert [t.name for t in program.graph.inputs] == ["x"]
    assert program.opset == CANONICAL_OPSET


def test_constant_subgraphs_are_folded_and_no_ops_removed(digits):
    # A weight made by ConstantOfShape, a Constant bias, Dropout, Sum of three, Identity to output.
    fill = helper.make_tensor("fill", onnx.TensorProto.FLOAT, [1], [0.01])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["w"], value=fill),
        helper.make_node(
            "Constant",
            [],
            ["b"],
            value=helper.make_tensor("bv", onnx.TensorProto.FLOAT, [10], list(range(10))),
        ),
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Dropout", ["f"], ["d"]),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Gemm", ["r", "w", "b"], ["g"], transB=1),
        helper.make_node("Sum", ["g", "g", "g"], ["s"]),
        helper.make_node("Identity", ["s"], ["y"]),
    ]
    model = models.make_model(nodes, {"shape": np.array([10, 64], np.int64)}, ["N", 1, 8, 8], ["N", 10])
    (before,) = run(model, digits[0][:20])
    program = _program(model)
    PassManager([Canonicalize()])(program)
    ops = _ops(program)
    assert "ConstantOfShape" not in ops and "Constant" not in ops
    assert "Dropout" not in ops and "Identity" not in ops and "Sum" not in ops
    assert ops.count("Add") == 2
    assert [t.name for t in program.graph.outputs] == ["y"]  # output name kept
    (after,) = run(program.to_onnx(), digits[0][:20])
    assert np.allclose(before, after, atol=1e-5)


def test_canonicalize_names_every_node():
    model = models.cnn_bn()
    for node in model.graph.node:
        node.name = ""
    program = _program(model)
    PassManager([Canonicalize()])(program)
    names = [n.name for n in program.graph.nodes]
    assert all(names) and len(set(names)) == len(names)


# --- fold batchnorm -----------------------------------------------------------------------


def _bn_after(layer_nodes, inits, in_shape, out_shape, channels, extra=()):
    nodes = [*layer_nodes, models._bn_node("h", "n", "bn"), helper.make_node("Relu", ["n"], ["y"]), *extra]
    return models.make_model(nodes, {**inits, **models._bn("bn", channels)}, in_shape, out_shape)


FOLD_CASES = {
    "conv-bias": (
        [helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1])],
        {"w": models._w(4, 1, 3, 3), "b": models._w(4, scale=0.1)},
        ["N", 1, 8, 8],
        ["N", 4, 8, 8],
        4,
    ),
    "conv-no-bias": (
        [helper.make_node("Conv", ["x", "w"], ["h"])],
        {"w": models._w(4, 1, 3, 3)},
        ["N", 1, 8, 8],
        ["N", 4, 6, 6],
        4,
    ),
    "conv-transpose-grouped": (
        [helper.make_node("ConvTranspose", ["x", "w", "b"], ["h"], group=2)],
        {"w": models._w(2, 3, 2, 2), "b": models._w(6, scale=0.1)},
        ["N", 2, 4, 4],
        ["N", 6, 5, 5],
        6,
    ),
    "gemm-transB": (
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1, beta=0.5)],
        {"w": models._w(5, 16), "b": models._w(5, scale=0.1)},
        ["N", 16],
        ["N", 5],
        5,
    ),
    "gemm-no-bias": (
        [helper.make_node("Gemm", ["x", "w"], ["h"])],
        {"w": models._w(16, 5)},
        ["N", 16],
        ["N", 5],
        5,
    ),
    "matmul-add": (
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["h"])],
        {"w": models._w(16, 5), "b": models._w(5, scale=0.1)},
        ["N", 16],
        ["N", 5],
        5,
    ),
    "matmul": (
        [helper.make_node("MatMul", ["x", "w"], ["h"])],
        {"w": models._w(16, 5)},
        ["N", 16],
        ["N", 5],
        5,
    ),
    "conv-add": (
        [helper.make_node("Conv", ["x", "w", "cb"], ["c"]), helper.make_node("Add", ["c", "b"], ["h"])],
        {"w": models._w(4, 1, 3, 3), "cb": models._w(4, scale=0.1), "b": models._w(4, 1, 1, scale=0.1)},
        ["N", 1, 8, 8],
        ["N", 4, 6, 6],
        4,
    ),
}


@pytest.mark.parametrize("case", sorted(FOLD_CASES))
def test_batchnorm_folds_into_its_producer(case):
    nodes, inits, in_shape, out_shape, channels = FOLD_CASES[case]
    model = _bn_after(nodes, inits, in_shape, out_shape, channels)
    x = np.random.default_rng(0).normal(size=[7, *in_shape[1:]]).astype(np.float32)
    (before,) = run(model, x)
    program = _program(model)
    PassManager([Canonicalize(), FoldBatchNorm()])(program)
    ops = _ops(program)
    assert "BatchNormalization" not in ops and "Mul" not in ops  # folded, not an affine
    (after,) = run(program.to_onnx(), x)
    assert np.allclose(before, after, atol=1e-5)


def test_batchnorm_without_foldable_producer_becomes_affine():
    model = models.standalone_bn()
    x = np.random.default_rng(0).uniform(size=[5, 1, 8, 8]).astype(np.float32)
    (before,) = run(model, x)
    program = _program(model)
    PassManager([Canonicalize(), FoldBatchNorm()])(program)
    assert "BatchNormalization" not in _ops(program)
    assert _ops(program).count("Mul") == 2
    (after,) = run(program.to_onnx(), x)
    assert np.allclose(before, after, atol=1e-5)


def test_shared_producer_is_not_folded():
    """The conv output also feeds another consumer: scaling its weights would change that one."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"]),
        models._bn_node("h", "n", "bn"),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("Add", ["r", "h"], ["y"]),
    ]
    model = models.make_model(
        nodes, {"w": models._w(4, 1, 3, 3), **models._bn("bn", 4)}, ["N", 1, 8, 8], ["N", 4, 6, 6]
    )
    x = np.random.default_rng(0).uniform(size=[3, 1, 8, 8]).astype(np.float32)
    (before,) = run(model, x)
    program = _program(model)
    PassManager([Canonicalize(), FoldBatchNorm()])(program)
    (after,) = run(program.to_onnx(), x)
    assert np.allclose(before, after, atol=1e-5)


def test_training_mode_batchnorm_is_rejected():
    model = models.cnn_bn()
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            node.attribute.append(helper.make_attribute("training_mode", 1))
            node.output.extend(["", ""])
            break
    program = _program(model)
    with pytest.raises(ConversionError, match="training mode"):
        PassManager([Canonicalize(), FoldBatchNorm()])(program)


# --- pre/postconditions -------------------------------------------------------------------


def test_thresholds_require_batchnorm_folded(digits):
    program = _program(models.cnn_bn())
    PassManager([Canonicalize(), RecognizeActivations()])(program)
    with pytest.raises(PreconditionError, match="BatchNormalization must be folded"):
        NormalizeThresholds(None)(program)


def test_insertion_requires_thresholds_and_initial_potentials():
    program = _program(models.cnn_bn())
    PassManager([Canonicalize(), RecognizeActivations(), FoldBatchNorm()])(program)
    with pytest.raises(PreconditionError, match="no threshold"):
        InsertNeurons()(program)
    with pytest.raises(PreconditionError, match="thresholds needed first"):
        InitialPotential()(program)


def test_insertion_leaves_no_relu(digits):
    program = _program(models.cnn_bn())
    calib = {"x": digits[0][:64]}
    from icsnn_onnx.data import Dataset

    PassManager(
        [
            Canonicalize(),
            RecognizeActivations(),
            FoldBatchNorm(),
            NormalizeThresholds(Dataset(calib)),
            InitialPotential(),
            InsertNeurons(),
        ]
    )(program)
    assert "Relu" not in _ops(program)
    assert _ops(program).count("NeuronSite") == 2  # unrolled later into IFNeuron steps
    for name, theta in program.thresholds.items():
        assert np.allclose(program.v_init[name], theta / 2)


def test_insertion_postcondition_catches_a_leftover_relu():
    """A site's own node left beside its neuron (an activation converted twice) is caught."""

    class LeaveRelu(InsertNeurons):
        def call(self, program):
            result = super().call(program)
            from onnx_graphsurgeon import Node, Variable

            x = program.graph.inputs[0]
            site = next(iter(program.sites))
            program.graph.nodes.append(Node("Relu", site, inputs=[x], outputs=[Variable("stray_out")]))
            return result

    program = _program(models.cnn_bn())
    PassManager([Canonicalize(), RecognizeActivations(), FoldBatchNorm()])(program)
    for name in program.sites:
        program.thresholds[name] = np.float32(1.0)
        program.v_init[name] = np.float32(0.5)
    with pytest.raises(PostconditionError, match="activation nodes left"):
        LeaveRelu()(program)


def test_dropout_whose_mask_is_a_graph_output_is_kept():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Dropout", ["r"], ["y", "mask"])]
    model = models.make_model(nodes, {}, ["N", 4], ["N", 4])
    model.graph.output.append(helper.make_tensor_value_info("mask", onnx.TensorProto.BOOL, ["N", 4]))
    program = _program(model)
    PassManager([Canonicalize()])(program)
    assert [t.name for t in program.graph.outputs] == ["y", "mask"]
    assert "Dropout" in _ops(program)
