"""ONNX graph analysis against MACs computed by hand, and against torch's own count."""

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import TensorProto, helper, numpy_helper

import targets.graph as graph_module
from search.candidate.build import export_onnx
from search.candidate.evaluate import model_cost
from targets.graph import analyze
from tests.support.cli import run_cli


def single_node_model(node, inputs, output, inits=()):
    graph = helper.make_graph([node], "g", inputs, [output], initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def weight(name, shape):
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def test_conv_macs_by_hand():
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    x = f32("x", ["batch", 3, 8, 8])
    model = single_node_model(node, [x], f32("y", None), [weight("w", (4, 3, 3, 3))])
    cost = analyze(model)
    (n,) = cost.nodes
    assert n.output_shapes == ((1, 4, 8, 8),)
    assert n.macs == 4 * 8 * 8 * 3 * 3 * 3  # C_out * H * W * C_in * k * k
    assert n.param_bytes == 4 * 3 * 3 * 3 * 4 and n.activation_bytes == 4 * 8 * 8 * 4
    assert n.dtype == "float32"
    assert analyze(model, batch=5).macs == 5 * n.macs


def test_depthwise_conv_macs_by_hand():
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=4, strides=[2, 2], pads=[1, 1, 1, 1])
    model = single_node_model(node, [f32("x", [1, 4, 8, 8])], f32("y", None), [weight("w", (4, 1, 3, 3))])
    cost = analyze(model)
    assert cost.nodes[0].output_shapes == ((1, 4, 4, 4),)
    assert cost.macs == 4 * 4 * 4 * 1 * 3 * 3  # one input channel per output channel


def test_gemm_macs_by_hand():
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    inits = [weight("w", (10, 16)), weight("b", (10,))]
    cost = analyze(single_node_model(node, [f32("x", [1, 16])], f32("y", None), inits))
    assert cost.macs == 1 * 10 * 16
    assert cost.param_bytes == (160 + 10) * 4


def test_matmul_macs_by_hand():
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    cost = analyze(single_node_model(node, [f32("a", [2, 5, 16]), f32("b", [2, 16, 8])], f32("y", None)))
    assert cost.nodes[0].output_shapes == ((2, 5, 8),)
    assert cost.macs == 2 * 5 * 8 * 16


def test_einsum_macs_by_hand():
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")
    cost = analyze(single_node_model(node, [f32("a", [2, 3, 4]), f32("b", [2, 4, 5])], f32("y", None)))
    assert cost.macs == 2 * 3 * 4 * 5


def test_peak_activation_of_a_chain_frees_dead_tensors():
    # x -> Relu -> a -> Relu -> b -> Relu -> y: at most an input and an output are alive at once
    nodes = [helper.make_node("Relu", [i], [o]) for i, o in (("x", "a"), ("a", "b"), ("b", "y"))]
    graph = helper.make_graph(nodes, "chain", [f32("x", [1, 1000])], [f32("y", [1, 1000])])
    cost = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert cost.peak_activation_bytes == 2 * 4000
    assert cost.activation_bytes == 3 * 4000 and cost.macs == 0
    assert cost.op_counts == {"Relu": 3}


@pytest.mark.parametrize(
    ("name", "kwargs"), [("test_resnet", {}), ("test_vit", {"img_size": 16, "patch_size": 4})]
)
def test_exported_model_macs_agree_with_torch(name, kwargs, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    x = torch.randn(1, 3, 16, 16)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    cost = analyze(path)
    macs, params = model_cost(model, x)
    assert cost.macs == pytest.approx(macs, rel=0.02)
    # the exporter stores identical initializers once (e.g. LayerNorm weights that are all ones)
    assert 0.95 * 4 * params <= cost.param_bytes <= 4 * params
    assert all(n.output_shapes[0] is not None for n in cost.nodes)
    assert cost.peak_activation_bytes > 0 and "float32" in cost.dtypes
    onnx.checker.check_model(onnx.load(str(path)))


def test_dequantized_weights_are_parameters_not_activations():
    w = numpy_helper.from_array(np.ones((16, 8), dtype=np.int8), "w")
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "s"], ["wf"]),
        helper.make_node("MatMul", ["x", "wf"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [f32("x", [1, 16])], [f32("y", [1, 8])], initializer=[w, scale])
    cost = analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert cost.param_bytes == 16 * 8 + 4  # int8 weights and one float scale
    assert cost.peak_activation_bytes == (16 + 8) * 4  # x and y; the float weight copy is folded
    assert cost.macs == 16 * 8


def test_analyze_command(tmp_path, capfd):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    path = export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    code, out, _ = run_cli(["analyze", str(path)], capfd)
    assert code == 0 and out.startswith("MACs ") and "Conv" in out
    code, out, _ = run_cli(["analyze", str(path), "--nodes", "--batch", "2"], capfd)
    assert code == 0 and "1x" not in out.splitlines()[1] and "2x" in out
    (tmp_path / "bad.onnx").write_text("not a model")
    for bad in (tmp_path / "bad.onnx", tmp_path / "missing.onnx"):
        code, _, err = run_cli(["analyze", str(bad)], capfd)
        assert code == 2 and err.startswith("edgepareto: error:") and len(err.strip().splitlines()) == 1


def test_shapes_come_from_a_runtime_pass_when_inference_gives_up(monkeypatch, tmp_path):
    model = timm.create_model("test_resnet", num_classes=10).eval()
    path = export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    expected = analyze(path)
    monkeypatch.setattr(graph_module, "infer_shapes", lambda m: m)  # as if inference knew no op
    cost = analyze(path)
    assert all(s is not None for n in cost.nodes for s in n.output_shapes)
    assert cost.macs == expected.macs > 0
    assert cost.peak_activation_bytes == expected.peak_activation_bytes


def test_incomplete_symbolic_inference_writes_nothing_to_the_working_directory(monkeypatch, tmp_path):
    """onnxruntime's ``infer_shapes`` saves ``sym_shape_infer_temp.onnx`` and external data into the
    current directory when inference is incomplete; analysis must never do that."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = timm.create_model("test_resnet", num_classes=10).eval()
    path = export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    real = SymbolicShapeInference._infer_impl

    def incomplete(self, *args, **kwargs):
        real(self, *args, **kwargs)
        return False  # as when an op's output shape could not be inferred

    monkeypatch.setattr(SymbolicShapeInference, "_infer_impl", incomplete)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    cost = analyze(path)
    assert cost.macs > 0 and list(work.iterdir()) == []
