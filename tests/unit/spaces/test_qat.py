"""``qat``: PyTorch's fake quantization inserted before the recovery fine-tuning, exported as an int8
QDQ file (weights stored as int8), screened at its final structure, and never chained with
``quantize`` or ``sparsity``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import optuna
import pytest
import timm
import torch

from search.candidate.build import build
from search.core.errors import UserError
from spaces import Candidate, Context, Space, Step
from spaces.data import TensorSplit
from spaces.qat import Qat
from tests.support.onnx import run_onnx_file
from tests.unit.search.candidate.test_structure_screen import skeleton

QAT = Step("qat", {"per_channel": True, "activations": "full", "lr_scale": 0.1})
DISTILL = Step("distill", {"epochs": 1, "temperature": 4.0, "alpha": 0.5})


@pytest.fixture(scope="module")
def task_and_ctx():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4).eval()
    gen = torch.Generator().manual_seed(0)
    train = TensorSplit(torch.randn(48, 3, 16, 16, generator=gen), torch.arange(48) % 4)
    return SimpleNamespace(base=model), Context(train=train, teacher=model, batch_size=16)


def test_the_file_is_int8_and_a_quarter_of_the_float_size(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    fp32, _ = build(Candidate((DISTILL,)), task, tmp_path / "fp32", ctx, lambda *_: None)
    path, model = build(Candidate((QAT, DISTILL)), task, tmp_path / "qat", ctx, lambda *_: None)
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "BatchNormalization" not in ops
    weights = [i for i in graph.initializer if len(i.dims) == 4]  # convolution kernels
    assert weights and all(i.data_type == onnx.TensorProto.INT8 for i in weights)
    assert path.stat().st_size < 0.4 * fp32.stat().st_size
    x = ctx.train.images(4)
    with torch.no_grad():
        want = model(x).numpy()
    got = run_onnx_file(path, x)
    assert np.abs(got - want).max() <= 0.05 * (want.max() - want.min()) + 1e-4  # int8 kernels, few steps
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75


def test_fine_tuning_moves_the_quantized_weights(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    untuned, _ = build(Candidate((QAT,)), task, tmp_path / "a", ctx, lambda *_: None)
    tuned, _ = build(Candidate((QAT, DISTILL)), task, tmp_path / "b", ctx, lambda *_: None)
    a = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(untuned)).graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tuned)).graph.initializer}
    assert a.keys() == b.keys()
    assert any(not np.array_equal(a[k], b[k]) for k in a if a[k].dtype == np.int8)


def test_the_screened_structure_is_the_final_int8_graph(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    seen = []
    final, _ = build(Candidate((QAT, DISTILL)), task, tmp_path, ctx, lambda *_: None, screen=seen.append)
    assert len(seen) == 1 and skeleton(seen[0]) == skeleton(final)  # latency and size known before tuning


def test_a_vit_is_not_supported():
    vit = timm.create_model("test_vit", num_classes=4, img_size=16, patch_size=4)
    assert not Qat.supports(vit) and Qat.supports(timm.create_model("test_resnet", num_classes=4))


def test_the_space_never_chains_qat_with_quantize_or_sparsity():
    space = Space.from_mapping({"techniques": {"sparsity": {}, "qat": {}, "distill": {}, "quantize": {}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        names = {s.technique for s in space.sample(study.ask()).steps}
        assert not ({"qat", "quantize"} <= names or {"qat", "sparsity"} <= names), names
        seen.add(frozenset(names))
    assert any("qat" in s for s in seen) and any("quantize" in s for s in seen)
    with pytest.raises(UserError, match="cannot both"):
        Space.from_mapping({"techniques": {"qat": {"enabled": "always"}, "quantize": {"enabled": "always"}}})
