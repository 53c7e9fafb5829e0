"""Ctrl-C that no library can swallow.

Some code deep in a trial (an exporter, a C extension) catches ``KeyboardInterrupt`` and re-raises
it as an ordinary exception, or drops it. The engine would then record a FAIL trial and go on, so
Ctrl-C would not stop the search. ``Interrupts`` notes every SIGINT, so the engine can stop after
the trial whatever became of the exception.

A SIGINT that lands while Python runs a finalizer or a weakref callback (SQLAlchemy's, during garbage
collection) cannot propagate from there: Python would print "Exception ignored ... KeyboardInterrupt"
with a traceback and carry on. While active, ``Interrupts`` takes those over: nothing is printed and
the interrupt is delivered again to the main thread, where it propagates.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

#: How long after a swallowed Ctrl-C it is delivered again (the finalizer has long returned by then).
REDELIVER_S = 0.05


class Interrupts:
    """Context manager: while active, ``requested`` turns true on SIGINT (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None
        self._previous_hook: Any = None
        self.redelivery: threading.Timer | None = None  # the last pending redelivery (tests join it)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def _unraisable(self, unraisable: Any) -> None:
        """``sys.unraisablehook``: a KeyboardInterrupt raised where it could not propagate is
        delivered again, from a helper thread once this hook has returned (``interrupt_main`` runs
        the SIGINT handler in the main thread; called from here it would fire inside the hook, where
        it cannot propagate either); anything else goes to the previous hook."""
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            self.requested = True
            self.redelivery = threading.Timer(REDELIVER_S, self._redeliver)
            self.redelivery.daemon = True
            self.redelivery.start()
            return
        self._previous_hook(unraisable)

    def _redeliver(self) -> None:
        """The swallowed interrupt, again; not once the search has stopped (``__exit__``), where a
        second KeyboardInterrupt would land in the CLI's own exit path."""
        if self._previous is not None:  # still active: ``__exit__`` clears it
            _thread.interrupt_main()

    def __enter__(self) -> Interrupts:
        # Only where Python's own Ctrl-C handling is active: an ignored SIGINT stays ignored,
        # and signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current is signal.default_int_handler:
                self._previous = current
                signal.signal(signal.SIGINT, self._handler)
                self._previous_hook = sys.unraisablehook
                sys.unraisablehook = self._unraisable
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
            sys.unraisablehook = self._previous_hook
            self._previous = None
