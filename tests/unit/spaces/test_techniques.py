"""Each technique on its own: shapes, MACs, and outputs unchanged where the technique is lossless. The
contract every registered technique meets is tests/contract/test_techniques_contract.py."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn

from search.candidate.build import export_onnx
from search.candidate.evaluate import compressed_mb
from spaces import TECHNIQUES
from spaces.lowrank import factorize_conv, factorize_linear, factorize_model, full_rank
from spaces.sparsity import sparsity_of
from spaces.train import distillation_loss, fit
from tests.support.onnx import run_onnx_file


def macs_params(model, x):
    return tp.utils.count_ops_and_params(model, x)


@pytest.mark.parametrize(
    ("importance", "scope"), [("l1", "uniform"), ("l2", "global"), ("taylor", "uniform")]
)
def test_prune_removes_channels_for_real(tiny_model, ctx, importance, scope):
    x = ctx.train.x[:4]
    before = tiny_model(x).detach()
    macs0, params0 = macs_params(tiny_model, x[:1])
    pruned = TECHNIQUES.get("prune")().apply(
        tiny_model, {"ratio": 0.5, "importance": importance, "scope": scope}, ctx
    )
    macs1, params1 = macs_params(pruned, x[:1])
    assert pruned(x).shape == before.shape
    assert params1 < 0.7 * params0 and macs1 < 0.7 * macs0
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 or c.out_channels < 8 for c in convs)


def test_lowrank_full_rank_is_lossless():
    torch.manual_seed(0)
    lin = nn.Linear(24, 16)
    x = torch.randn(5, 24)
    assert torch.allclose(factorize_linear(lin, full_rank(lin))(x), lin(x), atol=1e-5)
    conv = nn.Conv2d(6, 12, 3, stride=2, padding=1)
    img = torch.randn(2, 6, 9, 9)
    assert torch.allclose(factorize_conv(conv, full_rank(conv))(img), conv(img), atol=1e-5)


def test_lowrank_reduces_macs_and_skips_unprofitable_layers(tiny_model, ctx):
    x = ctx.train.x[:1]
    macs0, _ = macs_params(tiny_model, x)
    depthwise = sum(isinstance(m, nn.Conv2d) and m.groups > 1 for m in tiny_model.modules())
    replaced = factorize_model(tiny_model, 0.25)
    assert replaced and tiny_model(x).shape == (1, 10)
    assert macs_params(tiny_model, x)[0] < macs0
    assert depthwise == sum(isinstance(m, nn.Conv2d) and m.groups > 1 for m in tiny_model.modules())
    # at full rank no split saves MACs: nothing is replaced and the model is unchanged
    assert factorize_model(tiny_model, 1.0) == []


def test_sparsity_reaches_level_survives_finetune_and_compresses(tiny_model, ctx, tmp_path):
    tech = TECHNIQUES.get("sparsity")()
    dense = export_onnx(tiny_model, ctx.example_input, tmp_path / "dense.onnx")
    model = tech.apply(tiny_model, {"level": 0.8}, ctx)
    fit(model, ctx.train, epochs=1, lr=1e-3, batch_size=64, seed=0)
    model = tech.finalize(model)
    assert not any(hasattr(m, "weight_orig") for m in model.modules())
    assert sparsity_of(model) == pytest.approx(0.8, abs=0.01)
    sparse = export_onnx(model, ctx.example_input, tmp_path / "sparse.onnx")
    assert compressed_mb(sparse) < 0.5 * compressed_mb(dense)


def test_distillation_loss_alpha_zero_is_plain_cross_entropy():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = nn.functional.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, t, y, 4.0, 0.0), ce)
    assert not torch.allclose(distillation_loss(s, t, y, 4.0, 0.5), ce)
    assert distillation_loss(t, t, y, 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distill_recovers_accuracy_of_a_pruned_student(ctx, digits16):
    teacher = fit(
        timm.create_model("test_resnet", num_classes=10), ctx.train,
        epochs=3, lr=3e-3, batch_size=64, seed=0,
    )
    student = TECHNIQUES.get("prune")().apply(
        copy.deepcopy(teacher), {"ratio": 0.5, "importance": "l2", "scope": "uniform"}, ctx
    )
    x, y = digits16.val.x, digits16.val.y
    before = (student(x).argmax(1) == y).float().mean()
    student = TECHNIQUES.get("distill")().apply(
        student, {"epochs": 2, "temperature": 4.0, "alpha": 0.5}, replace(ctx, teacher=teacher)
    )
    after = (student(x).argmax(1) == y).float().mean()
    assert after > before


@pytest.mark.parametrize(
    "cfg",
    [
        {"mode": "dynamic", "per_channel": False},
        {"mode": "static", "per_channel": True, "calibration": "minmax"},
        {"mode": "static", "per_channel": False, "calibration": "percentile"},
        {"mode": "fp16"},
    ],
)
def test_quantize_produces_a_runnable_smaller_model(tiny_model, ctx, tmp_path, cfg):
    model = fit(tiny_model, ctx.train, epochs=1, lr=3e-3, batch_size=64, seed=0)
    src = export_onnx(model, ctx.example_input, tmp_path / "fp32.onnx")
    dst = tmp_path / "q.onnx"
    TECHNIQUES.get("quantize")().apply(src, dst, cfg, ctx)
    x = ctx.train.x[:32]
    ref, out = run_onnx_file(src, x), run_onnx_file(dst, x)
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert dst.stat().st_size < 0.8 * src.stat().st_size
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.8


def quantized_layers(path) -> set[str]:
    """Weighted layers whose weight goes through a DequantizeLinear (QDQ): the int8 ones."""
    import onnx

    graph = onnx.load(str(path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in dequantized}


def test_keep_float_leaves_the_most_sensitive_layers_float(tiny_model, ctx, tmp_path):
    """Mixed precision: the layers are ranked by how much the output error falls when each alone
    stays float in the int8 graph; a share of 0.5 keeps the top half float (their weights stay fp32),
    and its output is closer to the float model's than with every layer int8."""
    from spaces.quantize import CALIBRATION_IMAGES, SENSITIVITY_IMAGES, layer_sensitivity

    model = fit(tiny_model, ctx.train, epochs=3, lr=3e-3, batch_size=64, seed=0)
    src = export_onnx(model, ctx.example_input, tmp_path / "fp32.onnx")
    base = {"mode": "static", "per_channel": True, "calibration": "minmax", "ops": "all"}
    quantize = TECHNIQUES.get("quantize")()
    files = {}
    for share in (0.0, 0.5, 1.0):
        files[share] = tmp_path / f"keep{share}.onnx"
        quantize.apply(src, files[share], {**base, "keep_float": share}, ctx)
    images = ctx.train.images(CALIBRATION_IMAGES).numpy()
    pre = tmp_path / "keep0.5.pre.onnx"  # the graph the ranking saw (shape inference, BN folded)
    errors = layer_sensitivity(pre, images[:SENSITIVITY_IMAGES], base, images)  # as apply ranked them
    ranked = sorted(errors, key=lambda name: -errors[name])
    assert len(ranked) >= 4 and errors[ranked[0]] > 0 and len(set(errors.values())) > 1
    every = quantized_layers(files[0.0])
    assert every == set(ranked)  # with no share kept, every weighted layer is int8
    half = (len(ranked) + 1) // 2
    assert quantized_layers(files[0.5]) == set(ranked[half:])  # the most sensitive half stays float
    assert quantized_layers(files[1.0]) == set()
    x = ctx.train.x[:64]
    ref = run_onnx_file(src, x)
    error = {share: float(np.mean((run_onnx_file(f, x) - ref) ** 2)) for share, f in files.items()}
    assert error[1.0] < 1e-10 and error[0.5] < error[0.0]


def test_keep_float_is_labelled_and_static_only():
    import optuna

    from spaces import Space

    cls = TECHNIQUES.get("quantize")
    static = {"mode": "static", "per_channel": True, "calibration": "minmax"}
    assert cls.label({**static, "keep_float": 0.25}) == "int8-qdq per-ch minmax 25% float"
    assert "float" not in cls.label({**static, "keep_float": 0.0})
    for mode, searched in (("dynamic", False), ("fp16", False), ("static", True)):
        space = Space.from_mapping({"techniques": {"quantize": {"enabled": "always", "mode": [mode]}}})
        (step,) = space.sample(optuna.create_study().ask()).steps
        assert ("keep_float" in step.params) is searched, mode
