"""Where a trial's time goes: its stages, timed one after another (no torch here).

A trial's stages, in ``STAGES`` order of appearance in the tables: fine-tuning (``train``), BatchNorm
recalibration, the other torch steps (pruning, factorisation, token merging: ``compress``), ONNX
export, the ONNX steps (quantization, fp16: ``quantize``), the artifact's accuracy in onnxruntime,
its latency on the target, and everything else (sampling, MACs, bookkeeping: ``other``). Each is a
user attribute ``<stage>_s``, a ``trials.csv`` column and a key of ``metrics.json``'s ``stages``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

STAGES = ("train", "recalibrate", "compress", "export", "quantize", "accuracy", "latency", "other")


def stage_key(stage: str) -> str:
    """``train`` -> ``train_s``: the user attribute and column of a stage's seconds."""
    return f"{stage}_s"


STAGE_KEYS = tuple(stage_key(s) for s in STAGES)


class StageClock:
    """Seconds per stage: ``enter(stage)`` closes the running stage and opens the next; the time
    before the first ``enter`` counts as ``other``. ``totals()`` closes the running stage."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, since: float | None = None) -> None:
        """``since``: when the trial started, on ``clock``'s scale (None: now)."""
        self.clock = clock
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.current = "other"
        self.since = clock() if since is None else since

    def enter(self, stage: str) -> None:
        if stage not in self.seconds:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        now = self.clock()
        self.seconds[self.current] += now - self.since
        self.current, self.since = stage, now

    def totals(self) -> dict[str, float]:
        """``{"train_s": ..., ...}`` up to now (the running stage included)."""
        self.enter(self.current)
        return {stage_key(s): round(v, 4) for s, v in self.seconds.items()}
