"""Several processes on one study: storage with heartbeats, trial ownership, recovery of orphans.

Every process that runs trials (the driver, ``edgepareto worker``, a Ray trial) tags the trial with
its owner (``host:pid``) and records an Optuna heartbeat every ``HEARTBEAT_S`` seconds. A RUNNING
trial is an orphan when its owner is a dead process on this host, or when its heartbeat is older
than ``GRACE_S`` (a worker on another machine died or lost its network). Any process may recover an
orphan: the trial is marked FAIL (``interrupted``, not counted) and its parameters are enqueued again.
Changing the state is atomic in the storage, so two processes never re-queue the same trial twice.

A database that goes away (a restart, a network cut) is waited for: every storage call is retried
with backoff (``RetryingStorage``) for up to ``--db-retry-s`` (default ``DB_RETRY_S``, or
``$EDGEPARETO_DB_RETRY_S``) from the first failure; past that the process stops with one line
(``StorageUnreachable``, exit ``EXIT_STORAGE``), and the others re-queue the trial it was running.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from search.config.bounds import bound_of
from search.core.errors import UserError
from search.core.optional import require
from search.core.text import one_line
from search.front.counts import count_trials, frozen_row

HEARTBEAT_S = 5
GRACE_S = 30
OWNER_ATTR = "worker"
BASELINE_ATTR = "baseline"
FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
#: Seconds a process waits for an unreachable database before it stops (``--db-retry-s``).
DB_RETRY_S = 60.0
DB_RETRY_ENV = "EDGEPARETO_DB_RETRY_S"
#: Exit status of a process that stopped because its database stayed unreachable (EX_TEMPFAIL).
EXIT_STORAGE = 75
_T = TypeVar("_T")

# Optuna warns when heartbeats are used with ask/tell; the runner records them itself (``Heartbeat``).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


class StorageUnreachable(UserError):
    """The database stayed unreachable longer than the retry limit: the process stops (one line)."""

    exit_code = EXIT_STORAGE


def db_retry_s(value: float | None = None) -> float:
    """The retry limit: ``value``, else ``$EDGEPARETO_DB_RETRY_S``, else ``DB_RETRY_S``."""
    if value is None:
        text = os.environ.get(DB_RETRY_ENV, "").strip()
        try:
            value = float(text) if text else DB_RETRY_S
        except ValueError:
            raise UserError(f"${DB_RETRY_ENV} must be a number of seconds, got {text!r}") from None
    bound = bound_of("db_retry_s")
    if not bound.contains(value):
        raise UserError(f"--db-retry-s must be {bound.describe()}, got {value:g}", "db_retry_s")
    return value


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or used right now (a refused or dropped
    connection, a locked or read-only SQLite file), as opposed to a bad request. Optuna wraps the
    driver's error in ``StorageInternalError``; the cause tells."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


class RetryingStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose calls wait for the database: a call that fails because the database
    is unreachable is retried with exponential backoff (0.2 s doubling to 5 s, jittered) until it
    succeeds or ``retry_s`` have passed since the first failure of any thread, then
    ``StorageUnreachable`` is raised. One line goes to stderr when the database is lost and one when
    it is back. Only the outermost call retries (Optuna's methods call each other)."""

    def __init__(self, url: str, retry_s: float, **kwargs: Any) -> None:
        self.retry_s = retry_s
        self._init_retry_state()
        super().__init__(url, **kwargs)

    def _init_retry_state(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._down_since: float | None = None

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for key in ("_local", "_lock", "_down_since"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self._init_retry_state()
        super().__setstate__(state)

    def _retrying(self, call: Callable[[], _T]) -> _T:
        if getattr(self._local, "inside", False):
            return call()
        self._local.inside = True
        try:
            delay = 0.2
            while True:
                try:
                    result = call()
                except Exception as exc:
                    if not unreachable(exc):
                        raise
                    waited = self._lost(exc)
                    if waited >= self.retry_s:
                        raise StorageUnreachable(
                            f"the storage {_safe_url(self.url)} was unreachable for {waited:.0f} s "
                            f"(--db-retry-s {self.retry_s:g}): {one_line(exc, 160)}; this process stops, "
                            "and the run's other processes re-queue the trial it was running"
                        ) from None
                    time.sleep(min(delay * random.uniform(0.8, 1.2), self.retry_s - waited + 0.05))
                    delay = min(delay * 2, 5.0)
                    continue
                self._back()
                return result
        finally:
            self._local.inside = False

    def _lost(self, exc: BaseException) -> float:
        """Note a failure; seconds since the database was first found unreachable."""
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                print(f"edgepareto: storage {_safe_url(self.url)} unreachable ({one_line(exc, 160)}); "
                      f"retrying for up to {self.retry_s:g} s", file=sys.stderr, flush=True)
            return now - self._down_since

    def _back(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is not None:
                waited = time.monotonic() - self._down_since
                print(f"edgepareto: storage reachable again after {waited:.1f} s", file=sys.stderr,
                      flush=True)
                self._down_since = None


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    def call(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(lambda: method(self, *args, **kwargs))

    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


#: Every storage call Optuna's cached storage and this package make, public or not.
RETRIED = sorted(
    {n for n in vars(optuna.storages.BaseStorage) if not n.startswith("_")} - {"remove_session"}
    | {"record_heartbeat", "_get_stale_trial_ids", "_create_new_trial", "_set_trial_param", "_get_trials",
       "_get_best_trial_id"}
)
for _name in RETRIED:
    setattr(RetryingStorage, _name, _retried(_name))


def _safe_url(url: str) -> str:
    """``url`` without its password."""
    with contextlib.suppress(Exception):
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    return url.split("@")[-1]


def open_storage(url: str, retry_s: float | None = None) -> RetryingStorage:
    """An Optuna RDB storage (SQLite, PostgreSQL, MySQL, ...) with heartbeats that waits up to
    ``retry_s`` (``db_retry_s``) for an unreachable database; a bad URL is a ``UserError``; a
    PostgreSQL URL without its driver names the package to install."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        require("psycopg2", f"storage {scheme}://...")
    limit = db_retry_s(retry_s)
    # a server database: check each pooled connection before use, so a restarted server costs no call
    engine = {} if scheme.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):
        try:
            return RetryingStorage(
                url, limit, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
        except Exception as exc:
            # another process made the tables or Optuna's version rows meanwhile (CREATE TABLE, or the
            # UNIQUE alembic_version row): open again, and find them made
            if attempt < 2 and ("already exists" in str(exc) or _is_integrity(exc)):
                time.sleep(0.5)
                continue
            raise UserError(f"cannot open storage {url}: {one_line(exc)}") from None
    raise AssertionError("unreachable")


def _is_integrity(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, sqlalchemy.exc.IntegrityError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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
            try:
                self.storage.record_heartbeat(self.trial_id)
            except StorageUnreachable as exc:  # past --db-retry-s: the others re-queue this trial
                lost(exc)
            except Exception:  # a storage hiccup must not kill the trial
                pass

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


def lost(exc: StorageUnreachable) -> None:
    """End this process from a thread other than the trial's (the trial may be deep in native code):
    the one line, then exit ``EXIT_STORAGE``. The trial stays RUNNING; its owner is gone, so any other
    process of the run re-queues it (as after ``kill -9``)."""
    print(f"edgepareto: error: {exc}", file=sys.stderr, flush=True)
    os._exit(EXIT_STORAGE)


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: finished, and not cut short by an interruption (the
    rule of ``search.front.counts``, which ``show``, the service and the report count by)."""
    rows = [frozen_row(t) for t in study.get_trials(deepcopy=False, states=FINISHED)]
    return count_trials(rows, budget=0).counted


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
