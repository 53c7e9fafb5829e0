"""Recovery fine-tuning with knowledge distillation from the uncompressed base model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from spaces.base import TECHNIQUES, Context, TorchTechnique
from spaces.params import FloatParam, IntParam
from spaces.train import fit


@TECHNIQUES.register("distill")
class Distill(TorchTechnique):
    """Fine-tune the compressed student; ``alpha`` weighs the teacher's soft targets (0: plain CE)."""

    order = 40
    stage = "train"
    trains = True
    epochs_param = "epochs"
    params = (
        IntParam("epochs", 1, 10),
        FloatParam("temperature", 1.0, 8.0),
        FloatParam("alpha", 0.0, 1.0),
    )
    recipe = {"epochs": 2, "temperature": 4.0, "alpha": 0.5}

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        return f"{cfg['epochs']}ep T={cfg['temperature']:.1f} a={cfg['alpha']:.2f}"

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> nn.Module:
        epochs = int(cfg["epochs"])
        return fit(
            model, ctx.train,
            epochs=epochs, lr=ctx.lr, batch_size=ctx.batch_size, seed=ctx.seed,
            teacher=ctx.teacher, temperature=float(cfg["temperature"]), alpha=float(cfg["alpha"]),
            on_epoch=lambda e, loss, rate: ctx.on_progress(
                f"fine-tune {e}/{epochs} loss {loss:.3f} ({rate:,.0f} images/s)"
            ),
            checkpoint=ctx.checkpoint,
        )
