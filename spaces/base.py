"""Technique contract, the technique registry, and the Candidate record."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from search.core.registry import Registry
from spaces.data import Split
from spaces.params import Param

TECHNIQUES: Registry[type[Technique]] = Registry("technique")


@dataclass(frozen=True)
class Context:
    """What a technique may use besides the subject it transforms."""

    train: Split  # training images: fine-tuning, BN recalibration, importance, calibration
    teacher: nn.Module | None = None
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    on_progress: Callable[[str], None] = field(default=lambda _msg: None)
    #: Called between batches of training and BatchNorm recalibration: the search passes its device
    #: slot's checkpoint, so that a parallel trial's latency measurement waits one batch at most.
    checkpoint: Callable[[], None] = field(default=lambda: None)

    @property
    def example_input(self) -> torch.Tensor:
        """One training image in the evaluation transform (``1 x 3 x S x S``)."""
        return self.train.images(1)


class Technique(ABC):
    """A compression step. ``params`` is its search space, read as a small table."""

    name: ClassVar[str]
    order: ClassVar[int]
    params: ClassVar[tuple[Param, ...]] = ()
    #: A canonical moderate setting, tried early when the search is warm-started (None: never).
    recipe: ClassVar[Mapping[str, Any] | None] = None
    #: Whether the recipe is tried together with recovery fine-tuning (structural changes).
    needs_recovery: ClassVar[bool] = False
    #: Whether it only trains the weights (recovery fine-tuning): the exported graph's structure,
    #: hence its latency and size, is the same before and after it.
    trains: ClassVar[bool] = False
    #: The parameter that counts its training epochs, which successive halving hands out rung by rung
    #: (None: it does not train in epochs).
    epochs_param: ClassVar[str | None] = None
    #: The trial stage its time counts towards (``search.core.stages.STAGES``).
    stage: ClassVar[str] = "compress"
    #: Techniques a candidate cannot chain with this one (either way round; ``Space.sample`` offers
    #: the later one only when the earlier is off).
    excludes: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether this technique applies to ``model`` (a space listing it for another model is a
        user error, caught before the search starts)."""
        return True

    @staticmethod
    def label(cfg: Mapping[str, Any]) -> str:
        """A short human-readable description of one configuration."""
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.items())


class TorchTechnique(Technique):
    """Transforms a PyTorch model in place or by replacement, before export."""

    @abstractmethod
    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> nn.Module: ...

    def adapt(self, model: nn.Module, cfg: Mapping[str, Any], ctx: Context) -> Context:
        """The context this step and every later one (and the export) work in, given the model before
        any step (default: unchanged; ``resolution`` hands on the images at the candidate's size)."""
        return ctx

    def finalize(self, model: nn.Module) -> nn.Module:
        """Make the change permanent after all torch steps ran (default: nothing to do)."""
        return model

    def exported(self, path: Path) -> None:
        """Rewrite the freshly exported ONNX file in place where the step needs it (default: nothing;
        ``qat`` stores its quantized weights as int8)."""


class OnnxTechnique(Technique):
    """Transforms an exported ONNX file into another ONNX file."""

    stage = "quantize"

    @abstractmethod
    def apply(self, src: Path, dst: Path, cfg: Mapping[str, Any], ctx: Context) -> None: ...


@dataclass(frozen=True)
class Step:
    """One technique with its chosen parameters."""

    technique: str
    params: Mapping[str, Any]

    def label(self) -> str:
        cls = TECHNIQUES.get(self.technique)
        return f"{self.technique}({cls.label(self.params)})"


@dataclass(frozen=True)
class Candidate:
    """An ordered chain of technique steps; the empty chain is the uncompressed baseline."""

    steps: tuple[Step, ...] = ()

    def label(self) -> str:
        return " + ".join(s.label() for s in self.steps) or "baseline"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s.technique: dict(s.params) for s in self.steps}
