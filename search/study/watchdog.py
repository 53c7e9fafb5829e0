"""``--trial-timeout``: stop a trial that runs too long, in whichever thread runs it.

A timer raises ``TrialTimeout`` asynchronously in the thread running the trial (CPython's
``PyThreadState_SetAsyncExc``), so it works in the engine's main thread and in a Ray trial's worker
thread alike, and never touches signal handlers (Ctrl-C keeps its meaning). The exception lands at the
next Python bytecode: a training loop, an export or a measurement loop stops within one operation.
A thread stuck inside one native call never reaches a bytecode; for that case the timer calls
``on_hang`` after a grace period, which the caller uses to record the failure and end the process
(the run stays resumable, and other workers re-queue nothing: the trial is already marked failed).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Seconds a trial may stay stuck after its timeout before ``on_hang`` runs.
HANG_GRACE_S = 60.0


class TrialTimeout(Exception):
    """Raised inside a trial that ran past ``--trial-timeout``."""


@dataclass
class Deadline:
    """What happened to one guarded block."""

    seconds: float | None
    fired: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _done: bool = False

    @property
    def reason(self) -> str:
        return f"timeout: the trial ran longer than --trial-timeout {self.seconds:g} s"


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


@contextmanager
def deadline(
    seconds: float | None, on_hang: Callable[[Deadline], None] | None = None,
    grace: float = HANG_GRACE_S,
) -> Iterator[Deadline]:
    """Run the block with a time limit (None: no limit). On expiry ``TrialTimeout`` is raised in the
    block; ``state.fired`` tells afterwards whether the limit was hit, even if some library caught
    the exception."""
    state = Deadline(seconds)
    if seconds is None:
        yield state
        return
    thread_id = threading.get_ident()

    def fire() -> None:
        with state._lock:
            if state._done:
                return
            state.fired = True
            _raise_in(thread_id, TrialTimeout)

    def hang() -> None:
        with state._lock:
            if state._done:
                return
        if on_hang is not None:
            on_hang(state)

    timers = [threading.Timer(seconds, fire), threading.Timer(seconds + grace, hang)]
    for timer in timers:
        timer.daemon = True
        timer.start()
    try:
        yield state
    finally:
        with state._lock:
            state._done = True
            if state.fired:
                _raise_in(thread_id, None)  # clear an exception not yet delivered
        for timer in timers:
            timer.cancel()
