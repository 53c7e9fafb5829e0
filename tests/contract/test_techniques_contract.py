"""The technique contract, checked on every technique registered in ``spaces.TECHNIQUES``: it declares
its search space (and labels any setting of it), it is the identity at its identity setting where it has
one, what it makes survives ONNX export (onnxruntime gives torch's numbers), and it is deterministic:
the same subject, setting and seed give the same result twice."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import timm
import torch
from torch import nn

from search.candidate.build import export_onnx
from spaces import TECHNIQUES, Context, OnnxTechnique, TorchTechnique
from spaces.data import TensorSplit
from spaces.params import CategoricalParam, FloatParam, IntParam
from tests.support.onnx import run_onnx_file

#: Each technique's identity setting (its output equals its input), or None with the reason it has none.
#: A technique registered without an entry here fails test_every_technique_has_an_identity_decision.
IDENTITY: dict[str, Mapping[str, Any] | None] = {
    "prune": None,  # ratio >= 0.1: channels always go
    "lowrank": {"rank_ratio": 1.0},  # at full rank no split saves MACs: nothing is replaced
    "vit_lowrank": {"qkv": 1.0, "proj": 1.0, "fc1": 1.0, "fc2": 1.0},  # 1.0: leave this kind alone
    "sparsity": None,  # level >= 0.1: weights are always zeroed
    "distill": None,  # at least one epoch of training
    # int8 and fp16 both round the numbers; static int8 with every layer kept float (mixed precision
    # at 100%) leaves the graph as it is
    "quantize": {
        "mode": "static", "per_channel": True, "calibration": "minmax", "ops": "all", "keep_float": 1.0,
    },
    "tokens": {"ratio": 0.05, "start": 0.0},  # 5% of 16 tokens rounds down to none merged
    "vit_prune": {"head_ratio": 0.0, "mlp_ratio": 0.0, "importance": "l1"},
    "vit_embed": None,  # ratio >= 0.05: embedding channels always go
    "resolution": {"scale": 1.0},  # the data's own size: the model and its images are untouched
    "qat": None,  # int8 fake quantization always rounds
}
NAMES = TECHNIQUES.names()
#: Torch techniques whose file runs in int8 kernels: onnxruntime requantizes each layer with fixed-point
#: multipliers where PyTorch's fake quantization rounds in float, so a logit may move by a few steps of
#: the output grid. The tolerance, as a share of the logits' spread (a wrong scale or a missing
#: quantizer moves them by far more).
INT8_GRID = {"qat": 0.05}


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


def vit() -> nn.Module:
    """test_vit at 16 px with 4 px patches: 16 tokens."""
    torch.manual_seed(0)
    return timm.create_model("test_vit", pretrained=False, num_classes=10, img_size=16, patch_size=4).eval()


def subject(cls) -> nn.Module:
    """The tiny CNN where the technique applies to it, else the tiny ViT."""
    return cnn() if cls.supports(cnn()) else vit()


def setting(cls) -> dict[str, Any]:
    """The technique's recipe (its canonical moderate setting), else every parameter at its low end;
    integer parameters (epoch counts) at their low end either way, to keep the suite quick."""
    low = {p.name: p.choices[0] if isinstance(p, CategoricalParam) else p.low for p in cls.params}
    cfg = dict(cls.recipe) if cls.recipe is not None else dict(low)
    cfg.update({p.name: p.low for p in cls.params if isinstance(p, IntParam) and p.name in cfg})
    return cfg


@pytest.fixture
def contract_ctx(digits16) -> Context:
    return Context(train=TensorSplit(digits16.train.x[:64], digits16.train.y[:64]), batch_size=32, seed=0)


def build(cls, cfg: Mapping[str, Any], ctx: Context, tmp: Path, export: bool = True
          ) -> tuple[nn.Module | None, Path | None]:
    """Apply ``cls`` with ``cfg`` to a fresh subject: (the torch model, None for an ONNX technique; its
    ONNX file, None for a torch technique when not ``export``)."""
    model = subject(cls)
    tmp.mkdir(parents=True, exist_ok=True)
    if issubclass(cls, OnnxTechnique):
        src = export_onnx(model, ctx.example_input, tmp / "src.onnx")
        cls().apply(src, tmp / "out.onnx", cfg, ctx)
        return None, tmp / "out.onnx"
    tech = cls()
    ctx = tech.adapt(model, cfg, replace(ctx, teacher=copy.deepcopy(model)))
    out = tech.finalize(tech.apply(model, cfg, ctx)).eval()
    if not export:
        return out, None
    path = export_onnx(out, ctx.example_input, tmp / "out.onnx")
    tech.exported(path)
    return out, path


def inputs(cls, cfg: Mapping[str, Any], ctx: Context, n: int) -> torch.Tensor:
    """``n`` training images as the technique's later steps see them (``adapt``: a ``resolution``
    step's own size)."""
    if issubclass(cls, OnnxTechnique):
        return ctx.train.images(n)
    return cls().adapt(subject(cls), cfg, ctx).train.images(n)


@pytest.mark.parametrize("name", NAMES)
def test_registry_contract(name):
    cls = TECHNIQUES.get(name)
    assert issubclass(cls, (TorchTechnique, OnnxTechnique))
    assert cls.params, "every technique declares its search space"
    assert len({p.name for p in cls.params}) == len(cls.params), "a parameter declared twice"
    sample = {p.name: (p.choices[0] if isinstance(p, CategoricalParam) else p.low) for p in cls.params}
    assert isinstance(cls.label(sample), str) and cls.label(sample)
    if cls.recipe is not None:  # the recipe is a point of the declared space
        assert set(cls.recipe) <= {p.name for p in cls.params}
        assert isinstance(cls.label(dict(cls.recipe)), str)


def test_every_technique_has_an_identity_decision():
    assert set(IDENTITY) == set(NAMES), "add the new technique's identity setting (or None) to IDENTITY"
    for name, cfg in IDENTITY.items():
        if cfg is None:
            continue
        params = {p.name: p for p in TECHNIQUES.get(name).params}
        assert set(cfg) == set(params), name
        for key, value in cfg.items():  # the identity setting lies inside the declared space
            p = params[key]
            if isinstance(p, (FloatParam, IntParam)):
                assert p.low <= value <= p.high, (name, key, value)
            else:
                assert value in p.choices, (name, key, value)


@pytest.mark.parametrize("name", [n for n in NAMES if IDENTITY.get(n) is not None])
def test_identity_setting_is_lossless(name, contract_ctx, tmp_path):
    cls = TECHNIQUES.get(name)
    model = subject(cls)
    x = contract_ctx.train.x[:4]
    if issubclass(cls, OnnxTechnique):
        _, path = build(cls, IDENTITY[name], contract_ctx, tmp_path)
        src = tmp_path / "src.onnx"
        np.testing.assert_allclose(run_onnx_file(path, x), run_onnx_file(src, x), atol=1e-5, rtol=1e-5)
        return
    with torch.no_grad():
        before = model(x)
    out = cls().apply(model, IDENTITY[name], contract_ctx).eval()
    with torch.no_grad():
        torch.testing.assert_close(out(x), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_result_survives_onnx_export(name, contract_ctx, tmp_path):
    cls = TECHNIQUES.get(name)
    model, path = build(cls, setting(cls), contract_ctx, tmp_path)
    onnx.checker.check_model(onnx.load(str(path)))
    x = inputs(cls, setting(cls), contract_ctx, 3)
    got = run_onnx_file(path, x)
    assert got.shape == (3, 10) and np.isfinite(got).all()
    if model is not None:  # a torch technique: onnxruntime computes what torch computes
        with torch.no_grad():
            want = model(x).numpy()
        spread = float(want.max() - want.min())
        np.testing.assert_allclose(got, want, atol=INT8_GRID.get(name, 0.0) * spread + 1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed(name, contract_ctx, tmp_path):
    """Twice the same subject, setting and seed: the same weights and outputs (torch), the same
    outputs (an ONNX technique's file)."""
    cls = TECHNIQUES.get(name)
    first = build(cls, setting(cls), contract_ctx, tmp_path / "first", export=False)
    second = build(cls, setting(cls), contract_ctx, tmp_path / "second", export=False)
    x = inputs(cls, setting(cls), contract_ctx, 8)
    if first[0] is None:
        np.testing.assert_array_equal(run_onnx_file(first[1], x), run_onnx_file(second[1], x))
        return
    a, b = first[0].state_dict(), second[0].state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with torch.no_grad():
        assert torch.equal(first[0](x), second[0](x))
