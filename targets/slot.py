"""A per-device slot: latency measurements never overlap other trials' work on the same machine.

Trials running in parallel (Optuna worker processes, Ray trial actors) share this machine's CPU, so a
measurement is only clean while nobody else trains, exports, evaluates or measures. The slot is a
cross-process readers-writer lock on a lock file, taken with ``fcntl.flock``:

- ``slot.work()`` holds it **shared**: trials' ordinary work overlaps freely;
- ``slot.measure()`` holds it **exclusive**: a measurement waits until every other trial has left its
  ``work()`` and keeps new work out until it is done. Called inside ``work()`` it gives up this
  process's shared hold first (else two measurers inside work would wait on each other forever) and
  takes it back afterwards.

``flock`` grants a shared request whenever no exclusive lock is *held*, even while an exclusive request
waits, so workers that keep starting trials could starve a measurer. A second file, the turnstile,
prevents that: every acquisition passes through it exclusively, and a waiting measurer stays in it
until it gets the main lock, so new work queues behind the measurer::

    acquire shared:     flock(turn, EX); flock(main, SH); flock(turn, UN)
    acquire exclusive:  [flock(main, UN) if held]; flock(turn, EX); flock(main, EX); flock(turn, UN)
    after measuring:    flock(main, UN); [acquire shared again, as above, if inside work()]

This is deadlock-free because nobody waits on the turnstile while holding the main lock: the turnstile
holder waits only for main-lock holders, which never wait for anything here and finish their work.
Two calls keep it so, and keep measurements prompt: ``checkpoint()`` (between training batches and
trial stages) gives the shared hold up and queues again when a measurer waits, so a measurement waits
for one step of another trial rather than its rest; ``idle()`` gives it up while a trial waits for
another trial (its baseline), which may itself need to measure.

Scope: flock locks belong to an open file description, which all threads of a process share, so the
slot serializes *processes*. ``work()`` is counted per process (threads may nest it freely); a
``measure()`` keeps the slot's thread lock for its whole duration, so other threads cannot change the
hold meanwhile, but measurements inside one process are assumed sequential with that process's work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_SLOTS: dict[str, DeviceSlot] = {}
_SLOTS_LOCK = threading.Lock()


def default_lock_dir() -> Path:
    """``$EDGEPARETO_LOCK_DIR``, else a per-user folder in the system temp dir."""
    fallback = Path(tempfile.gettempdir()) / f"edgepareto-locks-{os.getuid()}"
    return Path(os.environ.get("EDGEPARETO_LOCK_DIR") or fallback)


class DeviceSlot:
    """The readers-writer slot of one device (``host``, ``remote:10.0.0.7:8765``, ...); see the module doc.

    ``waited_s`` accumulates the seconds ``measure()`` spent waiting for the slot.
    """

    def __init__(self, device: str, lock_dir: Path | None = None) -> None:
        self.device = device
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Distinct devices may share a sanitized name; they then share a slot, which is merely stricter.
        self.name = re.sub(r"[^A-Za-z0-9._-]+", "-", device).strip("-.") or "device"
        self.waited_s = 0.0
        self._lock = threading.RLock()
        self._open()

    def _open(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self._main = os.open(self.lock_dir / f"{self.name}.lock", flags, 0o600)
        self._turn = os.open(self.lock_dir / f"{self.name}.turn", flags, 0o600)
        self._pid = os.getpid()
        self._work_depth = 0
        self._measure_depth = 0

    def _check_fork(self) -> None:
        """A forked child shares the parent's open file descriptions (and holds): reopen, start afresh."""
        if self._pid != os.getpid():
            for fd in (self._main, self._turn):
                os.close(fd)  # drops only the child's reference: the parent's hold is untouched
            self._open()

    def _acquire(self, mode: int) -> None:
        """Take the main lock in ``mode`` through the turnstile (never called while holding main)."""
        fcntl.flock(self._turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._main, mode)
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        """Hold the slot shared for a trial's ordinary work; nested calls only count."""
        with self._lock:
            self._check_fork()
            if self._work_depth == 0 and self._measure_depth == 0:
                self._acquire(fcntl.LOCK_SH)
            self._work_depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._work_depth -= 1
                if self._work_depth == 0 and self._measure_depth == 0:
                    fcntl.flock(self._main, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        """Hold the slot exclusive for a measurement, inside ``work()`` or not; nested calls only count."""
        with self._lock:
            self._check_fork()
            self._measure_depth += 1
            try:
                if self._measure_depth == 1:
                    start = time.monotonic()
                    if self._work_depth:
                        fcntl.flock(self._main, fcntl.LOCK_UN)
                    self._acquire(fcntl.LOCK_EX)
                    self.waited_s += time.monotonic() - start
                yield
            finally:
                self._measure_depth -= 1
                if self._measure_depth == 0:
                    # Also the way back when the wait above was interrupted: the shared hold returns.
                    fcntl.flock(self._main, fcntl.LOCK_UN)
                    if self._work_depth:
                        self._acquire(fcntl.LOCK_SH)

    def checkpoint(self) -> None:
        """Inside ``work()``, between two steps (a training batch): let a waiting measurement in.
        A measurer waits in the turnstile, so a busy turnstile means: give the shared hold up and
        queue behind it. Costs one non-blocking ``flock`` when nobody waits."""
        with self._lock:
            if self._work_depth == 0 or self._measure_depth or self._pid != os.getpid():
                return
            try:
                fcntl.flock(self._turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fcntl.flock(self._main, fcntl.LOCK_UN)
                self._acquire(fcntl.LOCK_SH)
                return
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Give up this process's shared hold while it waits for another trial (which may need the
        slot exclusively to finish: waiting while holding would deadlock); taken back afterwards."""
        with self._lock:
            self._check_fork()
            held = self._work_depth > 0 and self._measure_depth == 0
            if held:
                fcntl.flock(self._main, fcntl.LOCK_UN)
        try:
            yield
        finally:
            if held:
                with self._lock:
                    self._acquire(fcntl.LOCK_SH)

    def close(self) -> None:
        """Close the lock files (which releases any hold); the slot is unusable afterwards."""
        with self._lock:
            for fd in (self._main, self._turn):
                with contextlib.suppress(OSError):
                    os.close(fd)


def checkpoint() -> None:
    """Let a waiting measurement in on every device this process works on (call between steps), so
    that a measurement waits for one batch of another trial, not for the rest of that trial."""
    for slot in list(_SLOTS.values()):
        slot.checkpoint()


def slot_for(device: str) -> DeviceSlot:
    """This process's slot for ``device`` (one instance per device, lock files in ``default_lock_dir()``)."""
    with _SLOTS_LOCK:
        slot = _SLOTS.get(device)
        if slot is None:
            slot = _SLOTS[device] = DeviceSlot(device)
        return slot
