"""Unstructured magnitude sparsity (global L1), made permanent after recovery fine-tuning.

Masks come from ``torch.nn.utils.prune`` and stay attached while later steps fine-tune, so pruned
weights stay zero. onnxruntime runs the weights dense, so sparsity shrinks the *compressed* size of
the artifact, not its latency.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.nn.utils import prune as torch_prune

from spaces.base import TECHNIQUES, Context, TorchTechnique
from spaces.params import FloatParam


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def sparsity_of(model: nn.Module) -> float:
    """Share of zero weights over the prunable layers."""
    total = zeros = 0
    for module, attr in prunable(model):
        w = getattr(module, attr)
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


@TECHNIQUES.register("sparsity")
class MagnitudeSparsity(TorchTechnique):
    """Zero the smallest-magnitude weights across all convs and linears."""

    order = 30
    params = (FloatParam("level", 0.1, 0.95),)
    recipe = {"level": 0.5}
    needs_recovery = True

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        return f"{cfg['level']:.0%}"

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> nn.Module:
        torch_prune.global_unstructured(
            prunable(model), pruning_method=torch_prune.L1Unstructured, amount=float(cfg["level"])
        )
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        for module in model.modules():
            if torch_prune.is_pruned(module) and hasattr(module, "weight_orig"):
                torch_prune.remove(module, "weight")
        return model
