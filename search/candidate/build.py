"""One candidate built: torch techniques -> ONNX export -> ONNX techniques (quantization).

The result is the artifact a device would run; ``search.candidate.evaluate`` scores it.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from search.core.atomic import write_with
from search.core.errors import CandidateError
from search.task.baseline import Task
from spaces import TECHNIQUES, Candidate, Context, OnnxTechnique, TorchTechnique
from spaces.base import Step, Technique
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


#: Where ``build`` writes a candidate's structure before fine-tuning (``screen``), in its folder.
STRUCTURE_DIR = "structure"
#: Where ``build`` writes the artifact after a rung's fine-tuning epochs (``Rungs``), in its folder.
RUNG_DIR = "rung-{epochs}"
Steps = list[tuple[Step, Technique]]


@dataclass(frozen=True)
class Rungs:
    """Fine-tuning in stages (successive halving): ``schedule`` holds the cumulative epochs at each
    rung, the last being the full budget; after each rung but the last, ``judge(epochs, artifact)``
    sees the candidate's artifact as it is then and says whether it goes on: False ends the build
    there, with that artifact as the candidate's (it may also raise). Each stage is its own schedule
    (warm restart: the rate rises and anneals again), so that the artifact at a rung is a finished
    short recovery, a deployable model, not one caught mid-schedule."""

    schedule: tuple[int, ...]
    judge: Callable[[int, Path], bool]

    @property
    def segments(self) -> tuple[int, ...]:
        """Epochs trained between one rung and the next (the first from zero)."""
        return tuple(b - a for a, b in zip((0, *self.schedule), self.schedule))


def build(
    candidate: Candidate, task: Task, out_dir: Path, ctx: Context, stage: Callable[..., None],
    screen: Callable[[Path], None] | None = None, rungs: Rungs | None = None,
) -> tuple[Path, nn.Module]:
    """Apply the candidate to a copy of the base model; returns the final ONNX file and torch model.
    ``stage(name, kind)`` announces each step (``kind``: its ``search.core.stages`` stage).

    ``screen``, when given, sees the artifact of the candidate's structure before its first training
    step (``Technique.trains``: recovery fine-tuning changes weights, not the graph): the same export
    and ONNX steps, in ``out_dir/structure/``, so that its latency and size are the final ones. It
    may raise to stop the build there. A candidate with no training step is not screened.

    ``rungs``, when given, replaces the training step's epochs (``Technique.epochs_param``) by its
    schedule, trained rung by rung (``Rungs``).

    Each torch step first adapts the context the steps and the export work in (``adapt``): a
    ``resolution`` step hands on the training images at the candidate's size, so the file declares
    that size."""
    model = copy.deepcopy(task.base)
    steps: Steps = [(s, TECHNIQUES.get(s.technique)()) for s in candidate.steps]
    for step, technique in steps:
        if isinstance(technique, TorchTechnique):
            ctx = technique.adapt(model, step.params, ctx)
    done: Steps = []
    for step, technique in steps:
        if isinstance(technique, TorchTechnique):
            if screen is not None and technique.trains:
                structure = copy.deepcopy(model)
                screen(_artifact(structure, done, steps, out_dir / STRUCTURE_DIR, ctx, stage))
                screen = None
            if rungs is not None and technique.epochs_param is not None:
                model, stopped = _by_rungs(model, step, technique, done, steps, out_dir, ctx, stage, rungs)
                if stopped is not None:
                    return stopped, model
                continue
            model = _apply(model, step, technique, ctx, stage)
            done.append((step, technique))
    return _artifact(model, done, steps, out_dir, ctx, stage), model


def _apply(
    model: nn.Module, step: Step, technique: TorchTechnique, ctx: Context, stage: Callable[..., None]
) -> nn.Module:
    """One torch step, seeded, then BatchNorm recalibration."""
    stage(step.technique, technique.stage)
    torch.manual_seed(ctx.seed)
    model = technique.apply(model, step.params, ctx)
    stage("recalibrate", "recalibrate")
    recalibrate_batchnorm(model, ctx.train, RECALIBRATION_IMAGES, checkpoint=ctx.checkpoint)
    return model


def _by_rungs(
    model: nn.Module, step: Step, technique: TorchTechnique, done: Steps, steps: Steps, out_dir: Path,
    ctx: Context, stage: Callable[..., None], rungs: Rungs,
) -> tuple[nn.Module, Path | None]:
    """The training step ``step`` in ``rungs``' stages; ``done`` gains the step. Stage ``k`` trains with
    seed ``ctx.seed + k`` (its own shuffles), so a one-rung schedule is exactly the plain step.
    Returns the model and None, or, where the judge stopped it at a rung, that rung's finalized model
    and artifact."""
    key = technique.epochs_param
    done.append((step, technique))
    for k, (epochs, part_epochs) in enumerate(zip(rungs.schedule, rungs.segments)):
        part = replace(step, params={**step.params, key: part_epochs})
        model = _apply(model, part, technique, replace(ctx, seed=ctx.seed + k), stage)
        if epochs != rungs.schedule[-1]:
            where = out_dir / RUNG_DIR.format(epochs=epochs)
            snapshot = copy.deepcopy(model)
            path = _artifact(snapshot, done, steps, where, ctx, stage)
            if not rungs.judge(epochs, path):
                return snapshot, path
    return model, None


def _artifact(
    model: nn.Module, done: Steps, steps: Steps, out_dir: Path, ctx: Context, stage: Callable[..., None]
) -> Path:
    """``model`` after its torch steps ``done``: made permanent, exported, then the candidate's ONNX
    steps; the final file is ``out_dir/model.onnx`` (``model`` is finalized in place)."""
    for _step, technique in done:
        model = technique.finalize(model)
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CandidateError("the compressed model has NaN or infinite weights")
    out_dir.mkdir(parents=True, exist_ok=True)
    stage("export", "export")
    current = export_onnx(model, ctx.example_input, out_dir / "fp32.onnx")
    for _step, technique in done:
        technique.exported(current)
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
    return final
