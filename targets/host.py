"""``host``: latency measured on this machine with onnxruntime's CPU execution provider."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort

from targets.agent import fixed_input, profile_nodes, session_options, time_runs
from targets.base import TARGETS, Latency, Target
from targets.slot import slot_for

#: The device slot of this machine's CPU (see ``targets.slot``).
HOST_DEVICE = "host"


def cpu_session(onnx_path: Path | str, threads: int) -> ort.InferenceSession:
    """A CPU session with a fixed thread count and full graph optimisation, as deployed."""
    return ort.InferenceSession(str(onnx_path), session_options(threads), providers=["CPUExecutionProvider"])


@TARGETS.register("host")
class HostTarget(Target):
    """This machine's CPU, measured: warm-up, then median and p90 of repeated batch-1 runs."""

    name = "host"
    local_device = HOST_DEVICE

    def __init__(self, threads: int = 1, warmup: int = 10, repeats: int = 50) -> None:
        self.threads = threads
        self.warmup = warmup
        self.repeats = repeats

    def latency(self, onnx_path: Path, input_shape: tuple[int, ...]) -> Latency:
        session = cpu_session(onnx_path, self.threads)
        with self.exclusive():  # no other trial's work runs on this CPU meanwhile
            runs, _ = time_runs(
                session, {session.get_inputs()[0].name: fixed_input(input_shape)}, self.warmup, self.repeats
            )
        times = np.asarray(runs)
        return Latency(
            median_ms=float(np.median(times) * 1e3),
            p90_ms=float(np.percentile(times, 90) * 1e3),
            repeats=self.repeats,
            threads=self.threads,
            source="measured",
            target=self.name,
            min_ms=float(times.min() * 1e3),
        )

    def node_times(self, onnx_path: Path, input_shape: tuple[int, ...]) -> dict[str, tuple[str, float]]:
        with self.exclusive():
            return profile_nodes(Path(onnx_path).read_bytes(), input_shape, self.threads, self.repeats)

    def exclusive(self) -> contextlib.AbstractContextManager:
        return slot_for(HOST_DEVICE).measure()

    def describe(self) -> str:
        return (
            f"host: {platform.machine()} {platform.processor() or ''} onnxruntime {ort.__version__}"
            f" CPU, {self.threads} thread(s), measured"
        ).replace("  ", " ")
