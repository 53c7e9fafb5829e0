"""ViT and DeiT techniques: shapes, parameter counts and MACs shrink, ONNX runs and matches torch."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch

from search.candidate.build import export_onnx
from search.candidate.evaluate import model_cost
from spaces import TECHNIQUES, Context
from spaces.data import TensorSplit
from spaces.lowrank import factorize_linear
from spaces.prune import classifiers_of
from spaces.space import Space
from spaces.train import fit, student_loss
from spaces.vit import head_count, is_vit
from tests.support.onnx import run_onnx_file

VIT = "vit_tiny_patch16_224"
DEIT = "deit_tiny_distilled_patch16_224"


def small_vit(name: str = VIT, **kwargs) -> torch.nn.Module:
    """A 4-block, 3-head, 96-wide ViT at 16 px with 4 px patches (16 tokens): fast, real layout."""
    torch.manual_seed(0)
    args = {"img_size": 16, "patch_size": 4, "depth": 4, "embed_dim": 96, "num_heads": 3, **kwargs}
    return timm.create_model(name, pretrained=False, num_classes=10, **args).eval()


@pytest.fixture
def vctx():
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    return Context(train=TensorSplit(x, y))


def apply(name: str, model, cfg, ctx):
    return TECHNIQUES.get(name)().apply(model, cfg, ctx)


def macs_params(model) -> tuple[int, int]:
    return model_cost(model, torch.randn(1, 3, 16, 16))


def assert_onnx_matches(model, tmp_path: Path, atol: float = 1e-4) -> None:
    x = torch.randn(3, 3, 16, 16)
    path = export_onnx(model, x[:1], tmp_path / "m.onnx")
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx_file(path, x), expected, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("name", [VIT, DEIT])
def test_head_and_mlp_pruning(name, vctx, tmp_path):
    model = small_vit(name)
    macs0, params0 = macs_params(model)
    apply("vit_prune", model, {"head_ratio": 0.34, "mlp_ratio": 0.5, "importance": "l2"}, vctx)
    for block in model.blocks:
        assert block.attn.num_heads == 2 and block.attn.head_dim == 32
        assert block.attn.qkv.out_features == 3 * 64 and block.attn.proj.in_features == 64
        assert block.mlp.fc1.out_features == 192 and block.mlp.fc2.in_features == 192
        assert block.norm1.normalized_shape == (96,)  # the embedding width is a separate option
    assert head_count(model) == 8
    macs1, params1 = macs_params(model)
    assert macs1 < 0.65 * macs0 and params1 < 0.65 * params0
    assert_onnx_matches(model, tmp_path)


def test_taylor_head_pruning_keeps_one_head(vctx, tmp_path):
    model = small_vit()
    apply("vit_prune", model, {"head_ratio": 0.75, "mlp_ratio": 0.0, "importance": "taylor"}, vctx)
    assert [b.attn.num_heads for b in model.blocks] == [1] * 4  # 3 heads x 0.75 -> 2 removed
    assert all(b.mlp.fc1.out_features == 384 for b in model.blocks)
    assert_onnx_matches(model, tmp_path)


@pytest.mark.parametrize("name", [VIT, DEIT])
def test_embedding_pruning(name, vctx, tmp_path):
    model = small_vit(name)
    macs0, params0 = macs_params(model)
    apply("vit_embed", model, {"ratio": 0.25, "importance": "l2"}, vctx)
    assert model.patch_embed.proj.out_channels == 72 and model.embed_dim == 72
    assert model.cls_token.shape[-1] == 72 and model.pos_embed.shape[-1] == 72
    if name == DEIT:
        assert model.dist_token.shape[-1] == 72 and model.head_dist.in_features == 72
    for block in model.blocks:
        assert block.attn.qkv.in_features == 72 and block.attn.num_heads == 3
        assert block.mlp.fc2.out_features == 72
    macs1, params1 = macs_params(model)
    assert macs1 < 0.85 * macs0 and params1 < 0.85 * params0
    assert_onnx_matches(model, tmp_path)


def test_zero_ratios_are_lossless(vctx):
    model = small_vit()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    apply("vit_prune", model, {"head_ratio": 0.0, "mlp_ratio": 0.0, "importance": "l1"}, vctx)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


def test_vit_lowrank_per_layer_kind(vctx, tmp_path):
    model = small_vit()
    macs0, params0 = macs_params(model)
    cfg = {"qkv": 0.5, "proj": 1.0, "fc1": 0.25, "fc2": 0.9}
    apply("vit_lowrank", model, cfg, vctx)
    for block in model.blocks:
        assert block.attn.qkv[0].out_features == 48  # 0.5 of full rank 96
        assert isinstance(block.attn.proj, torch.nn.Linear)  # ratio 1.0: left whole
        assert block.mlp.fc1[0].out_features == 24
        assert isinstance(block.mlp.fc2, torch.nn.Linear)  # 0.9 is above fc2's break-even 0.8
    assert isinstance(model.head, torch.nn.Linear) and isinstance(model.patch_embed.proj, torch.nn.Conv2d)
    macs1, params1 = macs_params(model)
    assert macs1 < 0.8 * macs0 and params1 < 0.8 * params0
    assert_onnx_matches(model, tmp_path)


def test_full_rank_split_of_vit_layers_is_exact(tmp_path):
    model = small_vit()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    for block in model.blocks:
        block.attn.qkv = factorize_linear(block.attn.qkv, 96)
        block.mlp.fc1 = factorize_linear(block.mlp.fc1, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-4, rtol=1e-4)
    assert_onnx_matches(model, tmp_path)


def _op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize(
    ("cfg", "present", "absent", "min_corr"),
    [
        ({"mode": "dynamic", "per_channel": False, "ops": "matmul"},
         {"MatMulInteger"}, {"ConvInteger"}, 0.95),
        ({"mode": "dynamic", "per_channel": True, "ops": "all"},
         {"MatMulInteger", "ConvInteger"}, set(), 0.95),
        # static int8 on an untrained ViT calibrated on noise is coarse, but must stay correlated
        ({"mode": "static", "per_channel": True, "calibration": "minmax", "ops": "matmul"},
         {"QuantizeLinear", "DequantizeLinear"}, set(), 0.6),
        ({"mode": "fp16"}, set(), {"MatMulInteger"}, 0.99),
    ],
)
def test_vit_quantization(cfg, present, absent, min_corr, vctx, tmp_path):
    model = small_vit()
    src = export_onnx(model, vctx.example_input, tmp_path / "fp32.onnx")
    dst = tmp_path / "q.onnx"
    TECHNIQUES.get("quantize")().apply(src, dst, cfg, vctx)
    ops = _op_types(dst)
    assert present <= ops and not absent & ops
    x = vctx.train.x[:8]
    out = run_onnx_file(dst, x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > min_corr


def test_distilled_deit_trains_both_heads_and_averages_them():
    model = small_vit(DEIT)
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    model.set_distilled_training(True)
    model.train()
    cls_logits, dist_logits = model(x)
    teacher = torch.randn(32, 10)
    plain = student_loss((cls_logits, dist_logits), None, y, 4.0, 0.5)
    kd = student_loss((cls_logits, dist_logits), teacher, y, 4.0, 0.5)
    assert plain.item() != pytest.approx(kd.item())
    model.set_distilled_training(False)
    fit(model, TensorSplit(x, y), epochs=1, lr=1e-3, batch_size=16, seed=0, teacher=small_vit(), alpha=0.5)
    assert not model.distilled_training and not model.training
    with torch.no_grad():
        out = model(x)  # eval: the average of both heads, one tensor
    assert out.shape == (32, 10)


def test_vit_detection_and_technique_support():
    assert is_vit(small_vit()) and is_vit(small_vit(DEIT))
    resnet = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    assert not is_vit(resnet)
    Space.load("vit").check(small_vit(), VIT)
    with pytest.raises(Exception, match="vit_prune does not apply to test_resnet"):
        Space.load("vit").check(resnet, "test_resnet")


def test_both_deit_heads_keep_their_width():
    model = small_vit(DEIT)
    assert classifiers_of(model) == [model.head, model.head_dist]
    vit = small_vit()
    assert classifiers_of(vit) == [vit.head]
    resnet = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    assert classifiers_of(resnet) == [resnet.fc]
