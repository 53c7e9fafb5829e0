"""One candidate built: torch techniques -> ONNX export -> ONNX techniques (quantization).

The result is the artifact a device would run; ``search.candidate.evaluate`` scores it.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from search.core.atomic import write_with
from search.core.errors import CandidateError
from search.task.baseline import Task
from spaces import TECHNIQUES, Candidate, Context, OnnxTechnique, TorchTechnique
from spaces.train import recalibrate_batchnorm

OPSET = 18


INPUT_NAME = "input"


OUTPUT_NAME = "logits"


#: Training images used to re-estimate BatchNorm statistics after each torch step.
RECALIBRATION_IMAGES = 1024


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """TorchScript-based exporter, opset 18, dynamic batch axis."""

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.eval(), (example,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )

    return write_with(path, write)


def build(
    candidate: Candidate, task: Task, out_dir: Path, ctx: Context, stage: Callable[..., None]
) -> tuple[Path, nn.Module]:
    """Apply the candidate to a copy of the base model; returns the final ONNX file and torch model.
    ``stage(name, kind)`` announces each step (``kind``: its ``search.core.stages`` stage)."""
    model = copy.deepcopy(task.base)
    steps = [(s, TECHNIQUES.get(s.technique)()) for s in candidate.steps]
    for step, technique in steps:
        if isinstance(technique, TorchTechnique):
            stage(step.technique, technique.stage)
            torch.manual_seed(ctx.seed)
            model = technique.apply(model, step.params, ctx)
            stage("recalibrate", "recalibrate")
            recalibrate_batchnorm(model, ctx.train, RECALIBRATION_IMAGES, checkpoint=ctx.checkpoint)
    for _step, technique in steps:
        if isinstance(technique, TorchTechnique):
            model = technique.finalize(model)
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CandidateError("the compressed model has NaN or infinite weights")
    stage("export", "export")
    current = export_onnx(model, ctx.example_input, out_dir / "fp32.onnx")
    for step, technique in steps:
        if isinstance(technique, OnnxTechnique):
            stage(step.technique, technique.stage)
            nxt = out_dir / f"{step.technique}.onnx"
            technique.apply(current, nxt, step.params, ctx)
            current = nxt
    final = out_dir / "model.onnx"
    os.replace(current, final)
    for leftover in out_dir.glob("*.onnx"):
        if leftover != final:
            leftover.unlink()
    return final, model
