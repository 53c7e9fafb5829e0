"""Structured pruning of timm Vision Transformers (ViT, DeiT, distilled DeiT) with torch-pruning.

Three widths shrink for real: attention heads (whole heads, so ``head_dim`` and the qkv reshape stay
valid), the MLP hidden width, and, as a separate technique, the embedding dimension that every
block shares. After pruning, each timm ``Attention`` gets its ``num_heads``/``attn_dim`` updated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch_pruning as tp
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn

from spaces.base import TECHNIQUES, Context, TorchTechnique
from spaces.params import CategoricalParam, FloatParam
from spaces.prune import IMPORTANCES, ROUND_TO, classifiers_of, taylor_gradients

#: Tokens every ViT keeps as learnable parameters, pruned along their last (embedding) axis.
TOKEN_PARAMS = ("cls_token", "dist_token", "reg_token", "pos_embed")


def is_vit(model: nn.Module) -> bool:
    """A timm VisionTransformer whose blocks use timm's standard ``Attention``."""
    return isinstance(model, VisionTransformer) and all(
        isinstance(b.attn, Attention) for b in model.blocks
    )


def require_vit(model: nn.Module, technique: str) -> None:
    if not is_vit(model):
        raise ValueError(f"{technique} needs a timm VisionTransformer, got {type(model).__name__}")


def _attentions(model: nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def sync_heads(model: nn.Module, heads: Mapping[nn.Module, int]) -> None:
    """Tell each timm Attention how many heads its (pruned) qkv layer now carries."""
    for attn in _attentions(model):
        attn.num_heads = heads[attn.qkv]
        attn.attn_dim = attn.num_heads * attn.head_dim
        if attn.qkv.out_features != 3 * attn.attn_dim:
            raise RuntimeError(f"qkv width {attn.qkv.out_features} does not match {attn.num_heads} heads")


def _pruner(model: nn.Module, ctx: Context, importance: str, **kwargs: Any) -> tp.pruner.MetaPruner:
    tokens = [getattr(model, name, None) for name in TOKEN_PARAMS]
    unwrapped = [(p, p.dim() - 1) for p in tokens if isinstance(p, nn.Parameter)]
    return tp.pruner.MetaPruner(
        model, ctx.example_input, importance=IMPORTANCES[importance](),
        num_heads={a.qkv: a.num_heads for a in _attentions(model)},
        unwrapped_parameters=unwrapped, round_to=ROUND_TO, **kwargs,
    )


def _step(model: nn.Module, pruner: tp.pruner.MetaPruner, importance: str, ctx: Context) -> None:
    model.eval()
    if importance == "taylor":
        taylor_gradients(model, ctx)
    pruner.step()
    model.zero_grad(set_to_none=True)
    sync_heads(model, pruner.num_heads)
    with torch.no_grad():
        model(ctx.example_input)  # fail here, not at export, if the graph was broken


def prune_heads_and_mlp(
    model: nn.Module, head_ratio: float, mlp_ratio: float, importance: str, ctx: Context
) -> nn.Module:
    """Remove ``round(head_ratio * heads)`` whole heads per block (at least one head stays) and
    ``mlp_ratio`` of each MLP's hidden units; the embedding dimension is left alone."""
    attns = _attentions(model)
    mlps = [m for m in model.modules() if isinstance(m, Mlp)]
    drop = {a.qkv: min(a.num_heads - 1, round(head_ratio * a.num_heads)) for a in attns}
    # torch-pruning removes ceil(ratio * heads) heads; aim half a head below the wanted count
    head_ratios = {qkv: (k - 0.5) / a.num_heads for a in attns if (k := drop[qkv := a.qkv]) > 0}
    ratios: dict[nn.Module, float] = {qkv: 0.5 for qkv in head_ratios}  # activates the head scope
    if mlp_ratio > 0:
        ratios.update({m.fc1: mlp_ratio for m in mlps})
    if not ratios:
        return model
    embed_producers = [model.patch_embed.proj] + [a.proj for a in attns] + [m.fc2 for m in mlps]
    pruner = _pruner(
        model, ctx, importance, pruning_ratio=0.0, pruning_ratio_dict=ratios,
        ignored_layers=embed_producers + classifiers_of(model),
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio_dict=head_ratios,
    )
    _step(model, pruner, importance, ctx)
    return model


def prune_embedding(model: nn.Module, ratio: float, importance: str, ctx: Context) -> nn.Module:
    """Narrow the embedding dimension shared by the patch embedding, every block and the head."""
    attns = _attentions(model)
    ignored = [a.qkv for a in attns] + [m.fc1 for m in model.modules() if isinstance(m, Mlp)]
    pruner = _pruner(
        model, ctx, importance, pruning_ratio=0.0,
        pruning_ratio_dict={model.patch_embed.proj: ratio},
        ignored_layers=ignored + classifiers_of(model),
    )
    _step(model, pruner, importance, ctx)
    width = model.patch_embed.proj.out_channels
    for attr in ("embed_dim", "num_features", "head_hidden_size"):
        if hasattr(model, attr):
            setattr(model, attr, width)
    return model


@TECHNIQUES.register("vit_prune")
class VitPrune(TorchTechnique):
    """Remove whole attention heads and MLP hidden units from every block of a timm ViT."""

    order = 10
    params = (
        FloatParam("head_ratio", 0.0, 0.75),
        FloatParam("mlp_ratio", 0.0, 0.85),
        CategoricalParam("importance", tuple(IMPORTANCES)),
    )
    recipe = {"head_ratio": 0.34, "mlp_ratio": 0.5, "importance": "l2"}
    needs_recovery = True
    supports = staticmethod(is_vit)

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        return f"heads {cfg['head_ratio']:.0%} mlp {cfg['mlp_ratio']:.0%} {cfg['importance']}"

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> nn.Module:
        require_vit(model, "vit_prune")
        return prune_heads_and_mlp(
            model, float(cfg["head_ratio"]), float(cfg["mlp_ratio"]), cfg["importance"], ctx
        )


@TECHNIQUES.register("vit_embed")
class VitEmbed(TorchTechnique):
    """Narrow a timm ViT's embedding dimension (the residual stream of every block)."""

    order = 11
    params = (
        FloatParam("ratio", 0.05, 0.6),
        CategoricalParam("importance", tuple(IMPORTANCES)),
    )
    recipe = {"ratio": 0.25, "importance": "l2"}
    needs_recovery = True
    supports = staticmethod(is_vit)

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        return f"embed {cfg['ratio']:.0%} {cfg['importance']}"

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> nn.Module:
        require_vit(model, "vit_embed")
        return prune_embedding(model, float(cfg["ratio"]), cfg["importance"], ctx)


def head_count(model: nn.Module) -> int:
    return sum(a.num_heads for a in _attentions(model))

