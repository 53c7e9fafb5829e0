"""Several processes on one study: storage with heartbeats, trial ownership, recovery of orphans.

Every process that runs trials (the driver, ``edgepareto worker``, a Ray trial) tags the trial with
its owner (``host:pid``) and records an Optuna heartbeat every ``HEARTBEAT_S`` seconds. A RUNNING
trial is an orphan when its owner is a dead process on this host, or when its heartbeat is older
than ``GRACE_S`` (a worker on another machine died or lost its network). Any process may recover an
orphan: the trial is marked FAIL (``interrupted``, not counted) and its parameters are enqueued again.
Changing the state is atomic in the storage, so two processes never re-queue the same trial twice.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterable
from types import TracebackType

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from search.core.errors import UserError
from search.core.optional import require
from search.core.text import one_line

HEARTBEAT_S = 5
GRACE_S = 30
OWNER_ATTR = "worker"
BASELINE_ATTR = "baseline"
FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)

# Optuna warns when heartbeats are used with ask/tell; the runner records them itself (``Heartbeat``).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage (SQLite, PostgreSQL, MySQL, ...) with heartbeats; a bad URL is a
    ``UserError``; a PostgreSQL URL without its driver names the package to install."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        require("psycopg2", f"storage {scheme}://...")
    for attempt in range(2):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except Exception as exc:
            if attempt == 0 and "already exists" in str(exc):  # another process made the tables meanwhile
                time.sleep(0.5)
                continue
            raise UserError(f"cannot open storage {url}: {one_line(exc)}") from None
    raise AssertionError("unreachable")


def owner() -> str:
    """This process, as recorded on the trials it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_here(tag: str | None) -> bool:
    """Whether ``tag`` names a process on this host that no longer exists."""
    if not tag or ":" not in tag:
        return False
    host, _, pid = tag.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Heartbeat:
    """Records the trial's heartbeat now and every ``HEARTBEAT_S`` seconds until the block ends."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self.storage = study._storage  # Optuna's own heartbeat thread uses the storage the same way
        self.trial_id = trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="edgepareto-heartbeat")

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a storage hiccup must not kill the trial
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> Heartbeat:
        if hasattr(self.storage, "record_heartbeat"):
            self.storage.record_heartbeat(self.trial_id)
            self.thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: finished, and not cut short by an interruption."""
    return sum(
        1 for t in study.get_trials(deepcopy=False, states=FINISHED)
        if not t.user_attrs.get("interrupted")
    )


def running_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _stale_ids(study: optuna.Study) -> set[int]:
    """Trials whose heartbeat stopped (their process died on any machine), by Optuna's own query. The
    study's storage is Optuna's cache over the RDB storage: ask it through the heartbeat interface
    (an attribute of the RDB storage alone would never be found, and no dead worker would be seen)."""
    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return set()
    return set(storage._get_stale_trial_ids(study._study_id))  # Optuna's own staleness query


def recover(study: optuna.Study, everything: bool = False) -> list[int]:
    """Re-queue orphaned RUNNING trials and return their numbers. ``everything`` (``--resume``): also
    trials no process has started yet (asked by a driver that is gone, e.g. pending in Ray)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    stale = _stale_ids(study)
    orphans = []
    for t in running:
        tag = t.user_attrs.get(OWNER_ATTR)
        if t._trial_id in stale or _dead_here(tag):
            orphans.append((t, "interrupted: its worker stopped mid-trial" if tag else None))
        elif everything and tag is None:
            orphans.append((t, None))
    return [t.number for t, reason in orphans if requeue(study, t, reason)]


def surplus(study: optuna.Study, number: int, trials: int) -> bool:
    """Whether the just-asked trial ``number`` is beyond ``trials``: two processes saw one trial
    left and both asked. The lowest-numbered running trials keep the remaining places."""
    places = trials - finished_count(study)
    running = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return number not in running[: max(places, 0)]


def give_back(study: optuna.Study, trial: optuna.Trial) -> None:
    """Withdraw a surplus trial before it runs: FAIL, not counted; an enqueued one (a baseline, a
    recipe, a retry) goes back to the queue."""
    trial.set_user_attr(OWNER_ATTR, owner())
    frozen = study._storage.get_trial(trial._trial_id)
    reason = "not run: another process took the run's last place at the same moment"
    requeue(study, frozen, reason, again="fixed_params" in frozen.system_attrs)


def requeue(
    study: optuna.Study, trial: FrozenTrial, reason: str | None = None, again: bool = True
) -> bool:
    """Mark a RUNNING trial FAIL (interrupted, not counted) and, if ``again``, enqueue its parameters
    again. False when another process got there first."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        storage.set_trial_user_attr(
            trial._trial_id, "fail_reason", reason or "interrupted: the run stopped mid-trial"
        )
        if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    if not again:
        return True
    attrs = {"retry_of": trial.number}
    if trial.user_attrs.get(BASELINE_ATTR):
        attrs[BASELINE_ATTR] = True
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)
    return True


def describe(numbers: Iterable[int]) -> str:
    return ", ".join(map(str, numbers))
