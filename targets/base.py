"""The Target contract and registry: where a candidate's latency comes from."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from search.core.errors import UserError
from search.core.registry import Registry

#: Target name -> class or factory, called with keyword settings (threads, repeats).
TARGETS: Registry[Callable[..., Target]] = Registry("target")


@dataclass(frozen=True)
class Latency:
    """Batch-1 latency of one ONNX file on one target."""

    median_ms: float
    p90_ms: float
    repeats: int
    threads: int
    source: str  # "measured", "measured:remote", "predicted:analytic" or "predicted:calibrated"
    target: str
    error_pct: float | None = None  # a prediction's expected error (cross-validated MAPE)
    min_ms: float | None = None  # fastest timed run: the least disturbed by a busy machine
    low_ms: float | None = None  # a prediction's interval (about 90% coverage); None when measured
    high_ms: float | None = None


class Target(ABC):
    """Measures (or predicts) the latency of an ONNX file with a given input shape.

    A target says what it supports through its attributes and methods, so callers never test its
    class: ``measures`` (timed runs, not a model's estimate), ``local_device`` (the slot of this
    machine it times on, or None), ``check()`` (reachable and usable, before any training) and
    ``exclusive()`` (hold the device for a series of measurements)."""

    name: str
    #: True when latencies are timed runs of the file; False when a model predicts them.
    measures: ClassVar[bool] = True
    #: The device slot of this machine that a measurement occupies (``targets.slot``); None when
    #: timing happens elsewhere (a remote agent) or nothing is timed (a prediction).
    local_device: ClassVar[str | None] = None

    @abstractmethod
    def latency(self, onnx_path: Path, input_shape: tuple[int, ...]) -> Latency: ...

    @abstractmethod
    def describe(self) -> str: ...

    def check(self) -> dict[str, Any]:
        """Raise ``UserError`` when the target cannot be used (an unreachable agent); returns what it
        learnt about the device (empty when there is nothing to ask)."""
        return {}

    def node_times(self, onnx_path: Path, input_shape: tuple[int, ...]) -> dict[str, tuple[str, float]]:
        """Each executed node's op type and mean microseconds per run, from onnxruntime's profiler on
        the device (``targets.agent.profile_nodes``), for kernel-level calibration. A target that
        cannot time single kernels raises ``UserError``."""
        raise UserError(f"{self.name} cannot time single kernels (only measured targets can)")

    def disabled_optimizers(self) -> tuple[str, ...]:
        """Graph optimizers of this machine's onnxruntime that the device's does not apply, so that
        ``targets.kernels.executed_graph`` here stands for the graph the device runs."""
        return ()

    def exclusive(self) -> contextlib.AbstractContextManager:
        """Hold the device for a series of measurements (this machine's CPU: its slot; a remote
        agent serializes its own measurements; a prediction needs nothing)."""
        return contextlib.nullcontext()


def create_target(name: str, **kwargs: Any) -> Target:
    """Look a target up by name and build it with explicit keyword settings.

    ``remote:URL`` is built by the factory registered as ``remote``, with ``url=URL``."""
    if name.startswith("remote:"):
        return TARGETS.get("remote")(url=name[len("remote:"):], **kwargs)
    return TARGETS.get(name)(**kwargs)
