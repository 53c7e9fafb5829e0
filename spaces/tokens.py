"""Token merging for timm ViTs, after ToMe (Bolya et al., "Token Merging: Your ViT but Faster", 2023).

In each merging block, between attention and MLP, bipartite soft matching pairs the patch tokens by the
cosine similarity of their attention keys (mean over heads) and averages the ``r`` most similar pairs,
weighted by how many patches each token already stands for (its size). Attention is proportional
(``+ log size`` on the logits), so a merged token counts as much as the patches it replaces. Prefix tokens
(class, distillation, registers) are never merged.

``r`` is fixed per block from the model's known token count, so the exported ONNX graph has static token
shapes and only the batch axis is dynamic. The A/B sets are constant masks; the matching is a max, two
TopK and a few elementwise ops; the merge is a one-hot matrix product of the size-weighted tokens and of
their sizes. No shape depends on the data, and no scatter is needed. The similarity and merge products
are Einsum ops, which int8 quantization (MatMul/Gemm) leaves in float.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from spaces.base import TECHNIQUES, Context, TorchTechnique
from spaces.params import FloatParam

#: Similarity tie-break per token index, so that equal tokens (a flat background) are matched in the same
#: order by torch and by onnxruntime, whose TopK puts equal values lowest index first.
TIE = 1e-6
#: Bias that rules a pair out. Cosine similarities lie in [-1, 1], so any allowed pair beats a ruled-out
#: one; a finite value (not -inf) keeps every tensor finite, which static int8 calibration (entropy,
#: percentile) requires of the tensors it observes.
EXCLUDED = -4.0
#: Pools that read only the prefix tokens; under any other pool the merged tokens are spread back to
#: their patches after the last block, so that an average (or attention pool) stays size-weighted.
PREFIX_POOLS = ("token",)


def merge_schedule(patches: int, depth: int, ratio: float, start: float) -> tuple[int, ...]:
    """Tokens merged in each block: ``ratio`` of the current patch tokens (at most half, as bipartite
    matching pairs them), in every block from ``floor(start * depth)`` on."""
    first = math.floor(start * depth + 1e-9)
    schedule, n = [], patches
    for i in range(depth):
        r = min(math.floor(ratio * n + 1e-9), n // 2) if i >= first else 0
        schedule.append(r)
        n -= r
    return tuple(schedule)


def token_counts(tokens: int, schedule: tuple[int, ...]) -> tuple[int, ...]:
    """Tokens entering each block, then the count leaving the last one."""
    counts = [tokens]
    for r in schedule:
        counts.append(counts[-1] - r)
    return tuple(counts)


def roles(n: int, prefix: int, r: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Static layout of one merge of ``r`` out of ``n`` tokens, the patch tokens alternating A, B, A, ...

    Returns ``is_a`` (n,), ``slot`` (n,): where each prefix or B token goes (prefix first, then the
    kept A tokens, then B), and ``bias`` (n, n), of ``like``'s dtype and device: ``EXCLUDED`` where A
    token ``i`` may not pair with token ``j``, else a tie-break ``-TIE * i``.
    """
    i = torch.arange(n, device=like.device)
    j = i - prefix
    is_a = (j >= 0) & (j % 2 == 0)
    is_b = (j >= 0) & (j % 2 == 1)
    kept = (n - prefix + 1) // 2 - r
    slot = torch.where(is_b, prefix + kept + j.div(2, rounding_mode="floor"), i)
    ties = (-TIE * i.to(like.dtype))[:, None].expand(n, n)
    bias = ties.masked_fill(~(is_a[:, None] & is_b[None, :]), EXCLUDED)
    return is_a, slot, bias


def attend(attn: Attention, x: Tensor, log_size: Tensor | None) -> tuple[Tensor, Tensor]:
    """timm's own ``Attention.forward`` with proportional attention; also its keys' mean over heads.

    ``log_size`` (B, 1, 1, N) goes in as the additive attention mask. The keys are caught where timm
    applies ``k_norm``, so widths come from the layers as they are now (heads pruned, ``qkv`` factorised)
    and op counters and fused kernels still see the attention module itself.
    """
    keys: list[Tensor] = []
    handle = attn.k_norm.register_forward_hook(lambda _m, _args, k: keys.append(k))
    try:
        out = attn(x, attn_mask=log_size)
    finally:
        handle.remove()
    return out, keys[0].mean(dim=1)


def match(metric: Tensor, n: int, r: int, prefix: int) -> Tensor:
    """Bipartite soft matching: the index (B, n) each of the n current tokens moves to.

    Each A token is paired with its most similar B token (cosine of ``metric`` (B, n, d)); the ``r``
    best-paired A tokens move onto their partners, the other A tokens are kept by descending similarity.
    Prefix tokens stay first. The sets are masks, not slices, so the exported graph stays small; ``n``
    is the planned count (a Python int, so that the layout exports as constants).
    """
    is_a, slot, bias = roles(n, prefix, r, metric)
    m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    best, partner = (torch.einsum("bid,bjd->bij", m, m) + bias).max(dim=-1)  # -3 or less on all rows but A's
    order = best.topk(n, dim=-1).indices  # A tokens first, most similar first
    rank = order.topk(n, dim=-1, largest=False).indices  # inverse permutation: each token's place
    moved = torch.where(rank < r, slot[partner], prefix + rank - r)
    return torch.where(is_a, moved, slot)


def merge(x: Tensor, size: Tensor, dest: Tensor, n: int, r: int) -> tuple[Tensor, Tensor]:
    """Size-weighted average of the tokens that share a ``dest``; ``size`` (B, n, 1) is summed.

    A one-hot (B, n - r, n) matrix product gathers and sums in one static-shaped op.
    """
    slots = torch.arange(n - r, device=x.device)[:, None]
    onehot = (dest[:, None, :] == slots).to(x.dtype)
    total = torch.einsum("boi,bic->boc", onehot, size)
    return torch.einsum("boi,bic->boc", onehot, x * size) / total, total


def spread(x: Tensor, where: Tensor) -> Tensor:
    """Copy each merged token back to every original token it stands for (ToMe's unmerge)."""
    return x.gather(1, where[..., None].expand(-1, -1, x.shape[-1]))


class MergingBlocks(nn.Sequential):
    """``VisionTransformer.blocks`` with token merging: the same blocks under the same names.

    Blocks before the first merge run their own forward; from there on each block runs proportional
    attention, merges ``schedule[i]`` tokens after the attention residual, then its MLP residual. With
    ``unmerge``, the output is spread back to one token per original token, for pools over all tokens.
    """

    def __init__(
        self, *blocks: nn.Module, schedule: tuple[int, ...] = (), tokens: int = 0, prefix: int = 1,
        unmerge: bool = False,
    ) -> None:
        super().__init__(*blocks)
        self.schedule = tuple(schedule) or (0,) * len(self)  # a slice of blocks merges nothing
        self.tokens = tokens
        self.prefix = prefix
        self.unmerge = unmerge

    def forward(self, x: Tensor) -> Tensor:
        if any(self.schedule) and x.shape[1] != self.tokens:
            raise RuntimeError(
                f"token merging was planned for {self.tokens} tokens, got {x.shape[1]}:"
                " the input size changed"
            )
        size: Tensor | None = None  # None: every token is still one patch
        where: Tensor | None = None
        for blk, r, n in zip(self, self.schedule, token_counts(self.tokens, self.schedule)):
            if size is None and r == 0:
                x = blk(x)
                continue
            log_size = None if size is None else size.log().transpose(1, 2)[:, None]
            if r == 0:
                x = blk(x, attn_mask=log_size)
                continue
            out, metric = attend(blk.attn, blk.norm1(x), log_size)
            x = x + blk.drop_path1(blk.ls1(out))
            dest = match(metric, n, r, self.prefix)
            if self.unmerge:
                where = dest if where is None else dest.gather(1, where)
            x, size = merge(x, torch.ones_like(x[..., :1]) if size is None else size, dest, n, r)
            x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        return x if where is None else spread(x, where)


def unsupported(model: nn.Module) -> str | None:
    """Why token merging cannot be applied to ``model``, in one line (None: it can)."""
    if not isinstance(model, VisionTransformer):
        return f"token merging needs a timm VisionTransformer, not {type(model).__name__}"
    if isinstance(model.blocks, MergingBlocks):
        return "token merging is already applied to this model"
    if not isinstance(model.patch_drop, nn.Identity):
        return "token merging does not support patch dropout (it changes token counts)"
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block or not isinstance(blk.attn, Attention):
            kind = f"{type(blk).__name__} with {type(getattr(blk, 'attn', None)).__name__}"
            return f"token merging needs timm Block with Attention; block {i} is {kind}"
    return None


def count_tokens(model: VisionTransformer, example: Tensor) -> int:
    """Tokens entering the first block for ``example`` (patches and prefix tokens)."""
    seen: list[int] = []
    handle = model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            model(example)
    finally:
        handle.remove()
    return seen[0]


def merge_tokens(model: VisionTransformer, example: Tensor, ratio: float, start: float) -> MergingBlocks:
    """Replace ``model.blocks`` by ``MergingBlocks`` planned for the token count of ``example``."""
    reason = unsupported(model)
    if reason:
        raise ValueError(reason)
    tokens = count_tokens(model, example)
    prefix = model.num_prefix_tokens
    schedule = merge_schedule(tokens - prefix, len(model.blocks), ratio, start)
    unmerge = model.attn_pool is not None or model.global_pool not in PREFIX_POOLS
    model.blocks = MergingBlocks(
        *model.blocks, schedule=schedule, tokens=tokens, prefix=prefix, unmerge=unmerge
    )
    return model.blocks


@TECHNIQUES.register("tokens")
class TokenMerging(TorchTechnique):
    """ToMe: merge similar patch tokens inside the ViT, fewer in each block from ``start`` of the depth."""

    order = 25
    params = (
        FloatParam("ratio", 0.05, 0.5),
        FloatParam("start", 0.0, 0.75),
    )
    recipe = {"ratio": 0.15, "start": 0.25}
    needs_recovery = True

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return unsupported(model) is None

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        return f"merge {cfg['ratio']:.0%}/block from {cfg['start']:.0%} depth"

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> nn.Module:
        merge_tokens(model, ctx.example_input, float(cfg["ratio"]), float(cfg["start"]))
        with torch.no_grad():
            model(ctx.example_input)  # fail here, not at export
        return model
