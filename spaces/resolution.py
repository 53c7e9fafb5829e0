"""Input resolution as a technique: the candidate runs on smaller images.

The strongest latency lever for CNNs (compute falls with the square of the side). The searched
``scale`` is a share of the data's input size, rounded to a step that suits the model: the patch
size for a ViT (whose position embeddings timm resamples to the new grid,
``VisionTransformer.set_input_size``), the network's output stride for a CNN (32 for timm's ResNets,
MobileNets, EfficientNets and ConvNeXts), halved until the full size holds at least
``MIN_STEPS`` steps (so a 32 px input steps by 8 px).

The size is a property of the candidate's data, not only of its weights: ``adapt`` hands the later
steps (fine-tuning, BatchNorm recalibration, calibration) the training images at the new size, and
the teacher sees them upsampled to its own. The exported file declares the new size; evaluation,
latency, the model card and ``predict.py`` read it from there (``search.candidate.evaluate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spaces.base import TECHNIQUES, Context, TorchTechnique
from spaces.params import FloatParam

#: The fewest sizes a CNN's step must leave between zero and the full size.
MIN_STEPS = 4
#: timm's output stride of its classification CNNs, where a model does not say.
DEFAULT_STRIDE = 32


def patch_size(model: nn.Module) -> int | None:
    """A ViT's patch side (timm's ``patch_embed.patch_size``); None for a model without patches."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    if size is None:
        return None
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def size_step(model: nn.Module, full: int) -> int:
    """The step the model's input size moves in: its patch for a ViT, else its output stride
    (timm's ``feature_info``), halved until ``full`` holds ``MIN_STEPS`` of them."""
    patch = patch_size(model)
    if patch is not None:
        return patch
    info = getattr(model, "feature_info", None)
    step = int(info[-1]["reduction"]) if info else DEFAULT_STRIDE
    while step > 1 and full // step < MIN_STEPS:
        step //= 2
    return step


def scaled_size(full: int, scale: float, step: int) -> int:
    """``scale`` of ``full`` rounded to a multiple of ``step``, at least one step, at most ``full``
    (1.0 gives ``full`` whatever the step)."""
    if scale >= 1.0:
        return full
    return min(full, max(step, round(scale * full / step) * step))


class AtSize(nn.Module):
    """``model`` fed its input resized to ``size`` x ``size`` (bilinear): the teacher of a
    reduced-resolution student sees the student's images at its own size."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x)


@TECHNIQUES.register("resolution")
class Resolution(TorchTechnique):
    """Run the candidate at ``scale`` of the data's input size (stepped, see ``size_step``)."""

    order = 5  # first: pruning's importance, calibration and fine-tuning see the candidate's images
    params = (FloatParam("scale", 0.25, 1.0),)
    recipe = {"scale": 0.75}
    needs_recovery = True

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        return f"x{cfg['scale']:.2f}"

    @staticmethod
    def size(model: nn.Module, cfg: Mapping[str, Any], full: int) -> int:
        """The candidate's input side for this setting."""
        return scaled_size(full, float(cfg["scale"]), size_step(model, full))

    def adapt(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> Context:
        full = ctx.train.size
        size = self.size(model, cfg, full)
        if size == full:
            return ctx
        teacher = AtSize(ctx.teacher, full) if ctx.teacher is not None else None
        return replace(ctx, train=ctx.train.at_size(size), teacher=teacher)

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> nn.Module:
        size = ctx.train.size
        if patch_size(model) is not None and tuple(model.patch_embed.img_size) != (size, size):
            model.set_input_size(img_size=(size, size))
        return model
