"""One candidate, end to end: torch techniques -> ONNX export -> ONNX techniques -> evaluation.

Everything is measured on the artifact a device would run: accuracy from an onnxruntime session of
the final file, latency from the target, size from the file on disk.
"""

from __future__ import annotations

import copy
import os
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search.atomic import write_with
from search.data import Split
from search.errors import CandidateError
from search.task import Task
from search.train import recalibrate_batchnorm
from spaces import TECHNIQUES, Candidate, Context, OnnxTechnique, TorchTechnique
from spaces.sparsity import sparsity_of
from targets import Target
from targets.host import cpu_session
from targets.slot import checkpoint as slot_checkpoint

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MB = 1e6
#: Training images used to re-estimate BatchNorm statistics after each torch step.
RECALIBRATION_IMAGES = 1024


@dataclass(frozen=True)
class Metrics:
    """What one candidate scored (accuracy on the split it was evaluated on)."""

    accuracy: float
    latency_ms: float
    latency_p90_ms: float
    latency_source: str
    latency_error_pct: float | None  # a prediction's expected error; None when measured
    size_mb: float
    compressed_mb: float
    params: int
    macs: int
    sparsity: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def onnx_accuracy(path: Path, split: Split, batch_size: int = 128) -> float:
    """Top-1 accuracy of the ONNX file in a fresh onnxruntime session, with torch's thread count
    (``--cpus-per-trial``; by default every core)."""
    session = cpu_session(path, threads=torch.get_num_threads())
    name = session.get_inputs()[0].name
    x = split.x.numpy()
    correct = 0
    for i in range(0, len(x), batch_size):
        slot_checkpoint()
        logits = session.run(None, {name: x[i : i + batch_size]})[0]
        if not np.isfinite(logits).all():
            raise CandidateError("the model outputs NaN or infinite logits")
        correct += int((logits.argmax(1) == split.y.numpy()[i : i + batch_size]).sum())
    return correct / len(x)


def model_cost(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass, counted by torch's own ``FlopCounterMode`` over the
    aten ops that ran (convolutions, matmuls, attention), so factorised, pruned and token-merged
    layers count what they compute."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(example)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def compressed_mb(path: Path) -> float:
    """Size after zlib (level 6): what sparsity and quantization save in storage and download."""
    return len(zlib.compress(path.read_bytes(), 6)) / MB


def build(
    candidate: Candidate, task: Task, out_dir: Path, ctx: Context, stage: Callable[[str], None]
) -> tuple[Path, nn.Module]:
    """Apply the candidate to a copy of the base model; returns the final ONNX file and torch model."""
    model = copy.deepcopy(task.base)
    steps = [(s, TECHNIQUES.get(s.technique)()) for s in candidate.steps]
    for step, technique in steps:
        if isinstance(technique, TorchTechnique):
            stage(step.technique)
            torch.manual_seed(ctx.seed)
            model = technique.apply(model, step.params, ctx)
            recalibrate_batchnorm(model, ctx.train_x[:RECALIBRATION_IMAGES])
    for _step, technique in steps:
        if isinstance(technique, TorchTechnique):
            model = technique.finalize(model)
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CandidateError("the compressed model has NaN or infinite weights")
    stage("export")
    current = export_onnx(model, ctx.example_input, out_dir / "fp32.onnx")
    for step, technique in steps:
        if isinstance(technique, OnnxTechnique):
            stage(step.technique)
            nxt = out_dir / f"{step.technique}.onnx"
            technique.apply(current, nxt, step.params, ctx)
            current = nxt
    final = out_dir / "model.onnx"
    os.replace(current, final)
    for leftover in out_dir.glob("*.onnx"):
        if leftover != final:
            leftover.unlink()
    return final, model


def evaluate(
    path: Path, model: nn.Module, task: Task, split: Split, target: Target,
    stage: Callable[[str], None],
) -> Metrics:
    """Accuracy (onnxruntime), latency (target), size (disk) of the artifact."""
    stage("accuracy")
    accuracy = onnx_accuracy(path, split)
    stage("latency")
    latency = target.latency(path, task.input_shape)
    macs, params = model_cost(model, task.data.train.x[:1])
    return Metrics(
        accuracy=accuracy,
        latency_ms=latency.median_ms,
        latency_p90_ms=latency.p90_ms,
        latency_source=latency.source,
        latency_error_pct=latency.error_pct,
        size_mb=path.stat().st_size / MB,
        compressed_mb=compressed_mb(path),
        params=int(params),
        macs=int(macs),
        sparsity=sparsity_of(model),
    )
