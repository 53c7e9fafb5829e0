"""Ctrl-C that no library can swallow.

Some code deep in a trial (an exporter, a C extension) catches ``KeyboardInterrupt`` and re-raises
it as an ordinary exception, or drops it. The engine would then record a FAIL trial and go on, so
Ctrl-C would not stop the search. ``Interrupts`` notes every SIGINT, so the engine can stop after
the trial whatever became of the exception.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class Interrupts:
    """Context manager: while active, ``requested`` turns true on SIGINT (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def __enter__(self) -> Interrupts:
        # Only where Python's own Ctrl-C handling is active: an ignored SIGINT stays ignored,
        # and signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current is signal.default_int_handler:
                self._previous = current
                signal.signal(signal.SIGINT, self._handler)
        return self

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a SIGINT arrived, even one some library swallowed."""
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
