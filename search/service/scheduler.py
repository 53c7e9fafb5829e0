"""Runs the queued jobs as worker processes, a few at a time, and keeps their state and progress.

Each job is the CLI itself in its own process group: ``python -m search search --config JOB.yaml
--name ID`` (``--resume ID`` after a restart), so a service search is exactly a CLI search: same run
folder, same files, same resume. The scheduler thread starts queued jobs while fewer than
``max_running`` run, records how each process ended, interrupts cancelled ones (SIGINT, the CLI's
Ctrl-C, then SIGKILL after a grace period) and caches each running job's progress from its study, so a
status request reads memory only.

After a restart, jobs that were running are resumed (their worker, if it survived, is stopped first);
after ``MAX_ATTEMPTS`` starts a job is failed with its reason. Queued jobs simply run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from search.core.text import one_line
from search.front.counts import TrialCounts, count_trials, frozen_row
from search.service.store import Job, JobStore

#: Where the service keeps job files (config, log) inside the runs root.
SERVICE_DIR = ".service"
MAX_ATTEMPTS = 5
GRACE_S = 20.0
PROGRESS_EVERY_S = 1.0


class Scheduler:
    """The job loop; ``start()`` runs it in a daemon thread, ``stop()`` ends it (jobs keep running)."""

    def __init__(
        self, store: JobStore, runs_dir: Path, max_running: int = 1, poll_s: float = 0.5,
        python: str = sys.executable,
    ) -> None:
        self.store = store
        self.runs_dir = runs_dir.resolve()
        self.max_running = max_running
        self.poll_s = poll_s
        self.python = python
        self.procs: dict[str, subprocess.Popen] = {}
        self.signalled: dict[str, float] = {}  # job id -> when SIGINT was sent
        self.progress: dict[str, TrialCounts] = {}
        self._progress_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()
        (self.runs_dir / SERVICE_DIR).mkdir(parents=True, exist_ok=True)

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="edgepareto-scheduler", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 15.0) -> None:
        """End the loop; running searches are interrupted (SIGINT: their finished trials are kept)
        and queued again, to resume when the service next starts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self.lock:
            for proc in self.procs.values():
                _kill_group(proc.pid, signal.SIGINT)
            deadline = time.monotonic() + grace_s
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    _kill_group(proc.pid, signal.SIGKILL)
            for job_id in list(self.procs):
                job = self.store.get(job_id)
                if job is not None and job.state == "running" and not job.cancel:
                    resume = (self.runs_dir / job_id / "run.yaml").is_file()
                    self.store.update(job_id, state="queued", pid=None, resume=resume)
            self._reap()  # those that ended by themselves meanwhile, or were cancelled

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the loop must outlive one bad job or a database hiccup
                print(f"edgepareto serve: scheduler: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop.wait(self.poll_s)

    def recover(self) -> None:
        """Jobs left running by a previous server: stop any surviving worker, then queue a resume."""
        for job in self.store.all("running"):
            if job.pid and _is_worker(job.pid, job.id):  # not a stranger that got the pid after a reboot
                _kill_group(job.pid, signal.SIGKILL)
            if job.cancel:
                self.store.update(job.id, state="cancelled", finished_at=time.time(), pid=None)
            elif job.attempts >= MAX_ATTEMPTS:
                self._fail(job.id, f"interrupted {job.attempts} times; not resumed again")
            else:
                resume = (self.runs_dir / job.id / "run.yaml").is_file()
                self.store.update(job.id, state="queued", pid=None, resume=resume)

    # ---- one pass ---------------------------------------------------------------------------------

    def tick(self) -> None:
        with self.lock:
            self._reap()
            self._cancel_running()
            self._start_queued()
        if time.monotonic() - self._progress_at >= PROGRESS_EVERY_S:
            self._progress_at = time.monotonic()
            for job_id in list(self.procs):
                self.progress[job_id] = read_progress(self.runs_dir, job_id, self.progress.get(job_id))

    def _reap(self) -> None:
        """Record how ended workers ended. A worker leaves ``procs`` only once that is stored: when the
        jobs database refuses the write (read-only, locked), the next tick records it again."""
        for job_id, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            job = self.store.get(job_id)
            if job is not None and job.state == "running":  # else queued again to resume (a stop)
                self.progress[job_id] = read_progress(self.runs_dir, job_id, self.progress.get(job_id))
                now = time.time()
                if job.cancel:
                    self.store.update(job_id, state="cancelled", finished_at=now, pid=None)
                elif code == 0:
                    self.store.update(job_id, state="done", finished_at=now, pid=None, error=None)
                else:
                    self._fail(job_id, last_error(self.log_path(job_id), code))
            del self.procs[job_id]
            self.signalled.pop(job_id, None)

    def _cancel_running(self) -> None:
        for job in self.store.all("running"):
            proc = self.procs.get(job.id)
            if not job.cancel or proc is None:
                continue
            sent = self.signalled.get(job.id)
            if sent is None:
                _kill_group(proc.pid, signal.SIGINT)  # the CLI's Ctrl-C: the run is left resumable
                self.signalled[job.id] = time.monotonic()
            elif time.monotonic() - sent > GRACE_S:
                _kill_group(proc.pid, signal.SIGKILL)

    def _start_queued(self) -> None:
        free = self.max_running - len(self.procs)
        for job in self.store.all("queued")[: max(free, 0)]:
            if not self.store.update(job.id, when=("queued",), state="running", started_at=time.time(),
                                     attempts=job.attempts + 1, error=None):
                continue  # cancelled meanwhile
            try:
                proc = self._spawn(job)
            except OSError as exc:
                self._fail(job.id, f"cannot start the worker process: {exc}")
                continue
            self.procs[job.id] = proc
            self.store.update(job.id, pid=proc.pid)
            self.progress[job.id] = TrialCounts(trials_of(job.config))

    def _spawn(self, job: Job) -> subprocess.Popen:
        folder = self.runs_dir / SERVICE_DIR
        if job.resume:
            args = ["--resume", job.id]
        else:
            config = folder / f"{job.id}.yaml"
            config.write_text(yaml.safe_dump(job.config, sort_keys=False))
            args = ["--config", str(config), "--name", job.id]
        log = open(self.log_path(job.id), "ab")  # noqa: SIM115 - the child owns it from here
        try:
            return subprocess.Popen(
                [self.python, "-m", "search", "search", *args, "--runs-dir", str(self.runs_dir), "--quiet"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.runs_dir, start_new_session=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
        finally:
            log.close()

    def _fail(self, job_id: str, reason: str) -> None:
        self.store.update(job_id, state="failed", finished_at=time.time(), pid=None, error=reason)

    # ---- for the API ------------------------------------------------------------------------------

    def log_path(self, job_id: str) -> Path:
        return self.runs_dir / SERVICE_DIR / f"{job_id}.log"

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job: a queued one at once, a running one by its scheduler. The new state, or None
        when the job had already ended."""
        with self.lock:
            if self.store.update(job_id, when=("queued",), state="cancelled", cancel=True,
                                 finished_at=time.time()):
                return "cancelled"
            if self.store.update(job_id, when=("running",), cancel=True):
                return "running"
        return None


def trials_of(config: dict[str, Any]) -> int:
    """The trials a job's config asks for (RunConfig's default when it does not say)."""
    from search.config.run_config import RunConfig

    return int(config.get("trials", RunConfig.trials))


def read_progress(runs_dir: Path, job_id: str, before: TrialCounts | None) -> TrialCounts:
    """Trial counts from the run's study (SQLite in the run folder); ``before`` when not readable yet."""
    total = before.budget if before else 0
    db = runs_dir / job_id / "study.db"
    if not db.is_file():
        return before or TrialCounts(total)
    try:
        import optuna

        storage = optuna.storages.RDBStorage(study_url(db), skip_table_creation=True)
        try:
            study_id = storage.get_study_id_from_name(job_id)
            rows = [frozen_row(t) for t in storage.get_all_trials(study_id, deepcopy=False)]
        finally:
            storage.remove_session()
            storage.engine.dispose()
    except Exception:
        return before or TrialCounts(total)
    return count_trials(rows, total)


def study_url(db: Path) -> str:
    """A run's SQLite study, opened read-only: the service only reads it. Opened read-write, Optuna
    writes its version rows into a study its worker is creating at that moment, and one of the two
    fails on a UNIQUE constraint (the soak saw a search fail that way at its start)."""
    return f"sqlite:///file:{quote(str(db))}?mode=ro&uri=true"


def last_error(log: Path, code: int) -> str:
    """The one-line reason a worker ended with ``code``: the CLI's error line, else its last line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if ln.startswith("edgepareto: ")]
    line = (errors or lines or [f"worker exited with code {code}"])[-1]
    return one_line(line.removeprefix("edgepareto: error: "), 500)


def _is_worker(pid: int, job_id: str) -> bool:
    """Whether process ``pid`` is alive and is the worker of ``job_id`` (its command line says so)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"search" in cmdline and job_id.encode() in cmdline


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def describe(job: Job, progress: TrialCounts | None) -> dict[str, Any]:
    """A job as the API shows it (without the Pareto table). ``trials_finished`` is the counted trials
    (an interrupted one that ran again is in ``interrupted``), so it never exceeds ``trials_total``
    while the budget holds."""
    p = progress or TrialCounts(trials_of(job.config))
    return {
        "id": job.id, "state": job.state, "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at), "error": job.error,
        "progress": {"trials_total": p.budget, "trials_finished": p.counted, **p.to_dict()},
    }


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
