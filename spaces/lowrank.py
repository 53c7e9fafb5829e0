"""Low-rank factorisation: truncated SVD splits a Linear or Conv2d into two thinner layers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from spaces.base import TECHNIQUES, Context, TorchTechnique
from spaces.params import FloatParam


def full_rank(layer: nn.Linear | nn.Conv2d) -> int:
    w = layer.weight
    return min(w.shape[0], w[0].numel())


def macs_per_position(layer: nn.Linear | nn.Conv2d, rank: int | None = None) -> int:
    """Multiply-accumulates per output position, unfactorised (rank None) or split at ``rank``."""
    out_f, fan_in = layer.weight.shape[0], layer.weight[0].numel()
    return out_f * fan_in if rank is None else rank * (fan_in + out_f)


def _svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(weight.detach().reshape(weight.shape[0], -1), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``W ~ (U sqrt(S)) (sqrt(S) V^T)``: in -> rank -> out; exact at full rank."""
    left, right = _svd_factors(layer.weight, rank)
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(right)
        second.weight.copy_(left)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def factorize_conv(layer: nn.Conv2d, rank: int) -> nn.Sequential:
    """A k x k conv into ``rank`` filters, then a 1x1 conv back to the output channels."""
    if layer.groups != 1:
        raise ValueError("grouped and depthwise convolutions are not factorised")
    left, right = _svd_factors(layer.weight, rank)
    _, c_in, kh, kw = layer.weight.shape
    first = nn.Conv2d(
        c_in, rank, (kh, kw), stride=layer.stride, padding=layer.padding,
        dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode,
    )
    second = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(right.reshape(rank, c_in, kh, kw))
        second.weight.copy_(left.reshape(layer.out_channels, rank, 1, 1))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def rank_for(layer: nn.Linear | nn.Conv2d, ratio: float) -> int:
    return max(1, round(ratio * full_rank(layer)))


def _factorizable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def factorize_model(
    model: nn.Module, ratio: float | Callable[[str], float | None]
) -> list[str]:
    """Replace every layer whose split saves MACs; returns the names replaced.

    ``ratio`` is one rank ratio for every layer, or a function of the layer's name giving its
    ratio (None: leave the layer alone).
    """
    ratio_of = ratio if callable(ratio) else (lambda _name: ratio)
    targets = []
    for name, module in model.named_modules():
        layer_ratio = ratio_of(name)
        if layer_ratio is not None and _factorizable(module):
            rank = rank_for(module, layer_ratio)
            if macs_per_position(module, rank) < macs_per_position(module):
                targets.append((name, module, rank))
    for name, module, rank in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        split = factorize_linear if isinstance(module, nn.Linear) else factorize_conv
        setattr(parent, child, split(module, rank))
    return [name for name, _, _ in targets]


@TECHNIQUES.register("lowrank")
class LowRank(TorchTechnique):
    """Truncated SVD of Linear and Conv2d weights; layers where the split saves no MACs stay."""

    order = 20
    params = (FloatParam("rank_ratio", 0.1, 1.0),)
    recipe = {"rank_ratio": 0.5}
    needs_recovery = True

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        return f"rank {cfg['rank_ratio']:.0%}"

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> nn.Module:
        factorize_model(model, float(cfg["rank_ratio"]))
        return model


#: The linear layers of a transformer block that ``vit_lowrank`` factorises, by name suffix.
VIT_LAYER_KINDS = ("qkv", "proj", "fc1", "fc2")


def vit_ratio_of(cfg: Mapping[str, Any]) -> Callable[[str], float | None]:
    """Per-kind rank ratios for the ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` layers
    inside ``blocks``; the patch embedding and the classifier are left alone."""

    def ratio_of(name: str) -> float | None:
        if not name.startswith("blocks."):
            return None
        kind = name.rpartition(".")[2]
        return float(cfg[kind]) if kind in VIT_LAYER_KINDS else None

    return ratio_of


@TECHNIQUES.register("vit_lowrank")
class VitLowRank(TorchTechnique):
    """Truncated SVD of a ViT's qkv, proj, fc1 and fc2 layers, with a rank ratio per layer kind.

    A split saves MACs only below a kind's break-even ratio (qkv 0.75, proj 0.5, fc1/fc2 0.8 of
    the embedding width); above it the layer stays whole, so 1.0 means "leave this kind alone".
    """

    order = 20
    params = tuple(FloatParam(kind, 0.1, 1.0) for kind in VIT_LAYER_KINDS)
    recipe = {"qkv": 0.5, "proj": 1.0, "fc1": 0.5, "fc2": 0.5}
    needs_recovery = True

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return isinstance(getattr(model, "blocks", None), nn.Module)

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        return " ".join(f"{k} {cfg[k]:.0%}" for k in VIT_LAYER_KINDS if cfg[k] < 1.0) or "none"

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> nn.Module:
        if not hasattr(model, "blocks"):
            raise ValueError(f"vit_lowrank needs a transformer with blocks, got {type(model).__name__}")
        factorize_model(model, vit_ratio_of(cfg))
        return model
