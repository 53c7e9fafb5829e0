"""Progress while a search runs: trial i/N, elapsed time, the current stage, best per objective."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from search.config.objectives import OBJECTIVES


class Progress:
    """Writes to stderr: one live line on a terminal, plain lines otherwise."""

    def __init__(
        self, objectives: Sequence[str], directions: Sequence[str], stream: TextIO | None = None,
        quiet: bool = False,
    ) -> None:
        self.objectives = tuple(objectives)
        self.directions = tuple(directions)
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = self.stream.isatty()
        self.start = time.monotonic()
        self.best: dict[str, float] = {}
        self.position = ""

    def __getstate__(self) -> dict:
        """Picklable (a Ray trial gets a copy): the stream is reattached to stderr."""
        return {k: v for k, v in self.__dict__.items() if k != "stream"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr

    def log(self, message: str) -> None:
        if self.quiet:
            return
        self._clear()
        print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        """Warnings print even when quiet."""
        self._clear()
        print(f"edgepareto: warning: {message}", file=self.stream, flush=True)

    def trial(self, index: int, total: int, number: int) -> None:
        self.position = f"[{index}/{total} {self._elapsed()}] trial {number}"

    def stage(self, name: str) -> None:
        if self.quiet:
            return
        line = f"{self.position}: {name} | best {self._best_text()}"
        if self.live:
            self._clear()
            self.stream.write(line[: 160])
            self.stream.flush()
        else:
            print(line, file=self.stream, flush=True)

    def done(self, outcome: str, values: Sequence[float] | None, feasible: bool = True) -> None:
        if values is not None and feasible:
            for obj, direction, v in zip(self.objectives, self.directions, values):
                old = self.best.get(obj)
                better = old is None or (v > old if direction == "maximize" else v < old)
                if better:
                    self.best[obj] = v
        self.log(f"{self.position} {self._elapsed()}: {outcome} | best {self._best_text()}")

    def _best_text(self) -> str:
        if not self.best:
            return "-"
        parts = []
        for obj, value in self.best.items():
            parts.append(f"{obj} {OBJECTIVES[obj].format(value)}")
        return ", ".join(parts)

    def _elapsed(self) -> str:
        s = int(time.monotonic() - self.start)
        return f"{s // 60:02d}:{s % 60:02d}"

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")

