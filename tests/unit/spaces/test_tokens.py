"""Token merging (ToMe) on tiny timm ViTs: schedule, MACs, exactness, ONNX export, and refusals."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from torch import nn

from search.candidate.build import export_onnx
from search.candidate.evaluate import model_cost
from spaces import TECHNIQUES, Context
from spaces.data import TensorSplit
from spaces.lowrank import factorize_model
from spaces.tokens import MergingBlocks, match, merge, merge_schedule, spread, token_counts
from targets.host import cpu_session

IMG = 16  # 4 x 4 patches of 4 px: 16 patch tokens


def vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "test_vit", pretrained=False, num_classes=10, img_size=IMG, patch_size=4, **kwargs
    ).eval()


def deit_distilled() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, num_classes=10, img_size=IMG, patch_size=4,
        depth=4, embed_dim=64, num_heads=2,
    ).eval()


def drop_last_head(attn: nn.Module) -> None:
    """Remove the last head of a timm Attention, as head pruning does: narrower qkv and proj input."""
    heads, dim = attn.num_heads, attn.head_dim
    rows = [s * heads * dim + i for s in range(3) for i in range((heads - 1) * dim)]
    qkv, proj = attn.qkv, attn.proj
    attn.qkv = nn.Linear(qkv.in_features, len(rows), bias=qkv.bias is not None)
    attn.proj = nn.Linear((heads - 1) * dim, proj.out_features)
    with torch.no_grad():
        attn.qkv.weight.copy_(qkv.weight[rows])
        attn.qkv.bias.copy_(qkv.bias[rows])
        attn.proj.weight.copy_(proj.weight[:, : (heads - 1) * dim])
        attn.proj.bias.copy_(proj.bias)
    attn.num_heads, attn.attn_dim = heads - 1, (heads - 1) * dim


def pruned_and_factorised() -> nn.Module:
    """Heads pruned (4 -> 3) and every Linear split by low-rank, as earlier techniques leave a ViT."""
    model = vit(num_heads=4)
    for blk in model.blocks:
        drop_last_head(blk.attn)
    factorize_model(model, 0.3)
    assert isinstance(model.blocks[0].attn.qkv, nn.Sequential)
    return model


def without_positions(model: nn.Module) -> nn.Module:
    """No position embedding: the patch tokens of a flat image are exactly equal, all ties."""
    with torch.no_grad():
        model.pos_embed.zero_()
    return model


def context(x: torch.Tensor) -> Context:
    return Context(train=TensorSplit(x, torch.zeros(len(x), dtype=torch.long)))


def apply_tokens(model: nn.Module, x: torch.Tensor, ratio: float = 0.3, start: float = 0.0) -> nn.Module:
    return TECHNIQUES.get("tokens")().apply(model, {"ratio": ratio, "start": start}, context(x))


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(3, 3, IMG, IMG)
    x[1] = 0.5  # a flat image: every patch token alike, so the matching is all ties
    return x


def test_schedule_is_a_share_of_the_current_tokens():
    assert merge_schedule(16, 6, 0.25, 0.5) == (0, 0, 0, 4, 3, 2)
    assert merge_schedule(16, 4, 0.9, 0.0) == (8, 4, 2, 1)  # bipartite matching merges at most half
    assert merge_schedule(16, 6, 0.05, 0.0) == (0,) * 6
    assert token_counts(17, (4, 3)) == (17, 13, 10)


def test_tokens_shrink_between_attention_and_mlp_and_macs_drop(images):
    model = vit()
    x = images[:1]
    macs0, params0 = model_cost(model, x)
    apply_tokens(model, images, ratio=0.25, start=0.3)
    assert model.blocks.schedule == (0, 4, 3, 2, 1, 1)
    into_attn, into_mlp = [], []
    for blk in model.blocks:
        blk.norm1.register_forward_pre_hook(lambda _m, a: into_attn.append(a[0].shape[1]))
        blk.norm2.register_forward_pre_hook(lambda _m, a: into_mlp.append(a[0].shape[1]))
    assert model(images).shape == (3, 10)
    counts = token_counts(17, model.blocks.schedule)
    assert into_attn == list(counts[:-1]) and into_mlp == list(counts[1:])
    macs1, params1 = model_cost(model, x)  # the merging itself counted too
    assert params1 == params0 and macs1 < 0.7 * macs0
    assert set(model.state_dict()) == set(vit().state_dict())  # same names: checkpoints still load


def test_nothing_merged_or_before_start_is_exact(images):
    ref = vit()
    expected = ref(images)
    model = apply_tokens(vit(), images, ratio=0.05)  # 5% of 16 tokens rounds down to 0 in every block
    assert model.blocks.schedule == (0,) * 6
    assert torch.equal(model(images), expected)
    # blocks before ``start`` run their own code on the untouched tokens
    seen = {}
    model = apply_tokens(vit(), images, ratio=0.3, start=0.5)
    for name, m in (("ref", ref), ("tome", model)):
        m.blocks[3].norm1.register_forward_pre_hook(lambda _m, a, name=name: seen.setdefault(name, a[0]))
        m(images)
    assert torch.equal(seen["ref"], seen["tome"])


def test_matching_merges_the_most_similar_pair_and_conserves_mass():
    torch.manual_seed(0)
    n, prefix, r = 11, 1, 3  # prefix + A at 1, 3, 5, 7, 9 + B at 2, 4, 6, 8, 10
    metric = torch.randn(2, n, 8)
    metric[:, 5] = metric[:, 8]  # A token 5 is a copy of B token 8
    dest = match(metric, n, r, prefix)
    assert (dest[:, 5] == dest[:, 8]).all() and (dest[:, 0] == 0).all()
    x, size = torch.randn(2, n, 4), torch.rand(2, n, 1) + 0.5
    merged, total = merge(x, size, dest, n, r)
    assert merged.shape == (2, n - r, 4) and total.shape == (2, n - r, 1)
    assert torch.allclose(total.sum(1), size.sum(1)) and torch.allclose(merged[:, 0], x[:, 0])
    assert torch.allclose((merged * total).sum(1), (x * size).sum(1), atol=1e-5)
    for b in range(2):  # every output slot is used; a slot's size is the sum of what moved there
        assert torch.allclose(torch.zeros(n - r).index_add(0, dest[b], size[b, :, 0]), total[b, :, 0])
    # equal tokens: the lowest-index A tokens merge, the same order as onnxruntime's TopK
    dest = match(torch.ones(2, n, 8), n, r, prefix)
    kept = (n - prefix + 1) // 2 - r
    assert (dest[:, [1, 3, 5]] >= prefix + kept).all() and (dest[:, [7, 9]] == torch.tensor([1, 2])).all()
    # spreading back: each original token reads its merged token; the plain mean is size-weighted
    ones = torch.ones(2, n, 1)
    merged, total = merge(x, ones, dest, n, r)
    assert torch.allclose(spread(merged, dest).mean(1), (merged * total).sum(1) / n, atol=1e-6)


@pytest.mark.parametrize(
    "build",
    [vit, lambda: vit(global_pool="avg"), lambda: vit(global_pool="avg", class_token=False),
     deit_distilled, pruned_and_factorised, lambda: without_positions(vit())],
    ids=["token-pool", "avg-pool", "no-class-token", "deit-distilled", "pruned-lowrank", "ties"],
)
def test_onnx_export_matches_torch_at_batch_1_and_3(build, images, tmp_path: Path):
    model = build()
    before = model(images)
    apply_tokens(model, images, ratio=0.3)
    assert any(model.blocks.schedule)
    assert model.blocks.unmerge == (model.global_pool != "token")
    with torch.no_grad():
        expected = model(images).numpy()
    assert expected.shape == before.shape and np.isfinite(expected).all()
    session = cpu_session(export_onnx(model, images[:1], tmp_path / "tome.onnx"), threads=1)
    name = session.get_inputs()[0].name
    assert isinstance(session.get_inputs()[0].shape[0], str)  # only the batch axis is dynamic
    assert session.get_inputs()[0].shape[1:] == [3, IMG, IMG]
    for b in (1, 3):
        got = session.run(None, {name: images[:b].numpy()})[0]
        np.testing.assert_allclose(got, expected[:b], atol=1e-4)


@pytest.mark.parametrize("calibration", ["minmax", "entropy", "percentile"])
def test_static_int8_calibrates_a_merged_vit(calibration, images, tmp_path: Path):
    """Every tensor of the merged graph is finite, as entropy and percentile calibration require
    (the pair mask was -inf once, and those calibrations failed with 'range [-inf, inf] not finite')."""
    model = apply_tokens(vit(), images, ratio=0.3)
    with torch.no_grad():
        expected = model(images).numpy()
    src = export_onnx(model, images[:1], tmp_path / "tome.onnx")
    cfg = {"mode": "static", "per_channel": False, "calibration": calibration, "ops": "all"}
    TECHNIQUES.get("quantize")().apply(src, tmp_path / "int8.onnx", cfg, context(images))
    session = cpu_session(tmp_path / "int8.onnx", threads=1)
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert got.shape == expected.shape and np.isfinite(got).all()
    ops = {node.op_type for node in onnx.load(tmp_path / "int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_trains_with_merging(images):
    model = apply_tokens(vit(drop_path_rate=0.1), images).train()
    loss = model(images).logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in model.blocks[-1].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_refuses_what_it_cannot_merge(images):
    torch.manual_seed(0)
    cnn = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    with pytest.raises(ValueError, match="VisionTransformer"):
        apply_tokens(cnn, images)
    model = apply_tokens(vit(), images)
    assert isinstance(model.blocks, MergingBlocks)
    with pytest.raises(ValueError, match="already"):
        apply_tokens(model, images)
    with pytest.raises(RuntimeError, match="planned for 17 tokens"):
        model(torch.randn(1, 3, 2 * IMG, 2 * IMG))  # test_vit takes any size; the plan does not


def test_registration():
    cls = TECHNIQUES.get("tokens")
    assert cls.order == 25 and cls.needs_recovery
    assert cls.label(cls.recipe) == "merge 15%/block from 25% depth"
