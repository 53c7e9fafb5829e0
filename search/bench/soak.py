"""``edgepareto bench service --soak``: the service under load and faults, with what must hold checked.

A real ``edgepareto serve`` on loopback (a private runs folder, token and jobs database) is given
``searches`` tiny searches at once, ``--max-running`` at a time, while ``pollers`` threads read status,
trials and the list without pause. Midway the server is killed with SIGKILL and restarted at once on
the same port, as a supervisor would: the first time alone (its workers survive it, and the new server
stops them and resumes their jobs), the second time with its workers (as when a container dies). Once,
the jobs database is made read-only (its folder and file: ``chattr +i`` under root, whom permissions do
not stop, else ``chmod``) until a worker has ended under it, and searches are submitted meanwhile.

Afterwards, what must hold: every search is done, or failed with a reason; every trial seen complete
through the API is still complete with the same results, nothing is counted twice and nothing is left
running (read from each run's Optuna study itself); and no request had a 5xx answer except while the
database was read-only, nor no answer except while the server was down. The figures: requests made,
answers by status, latency percentiles, searches recovered after a kill, trials re-queued.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import json
import math
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search.bench.procs import children
from search.bench.service import _free_port
from search.core.text import one_line
from search.service.scheduler import study_url

#: A search of a few seconds: the tiny timm test model on the embedded digits, quantization only.
SOAK_SEARCH: dict[str, Any] = {
    "model": "test_resnet", "img_size": 16, "epochs": 1, "trials": 3, "space": "quant-only",
    "max_accuracy_drop": 50,
}
FINAL = ("done", "failed", "cancelled")
NO_ANSWER = "no answer"
#: Results of a trial that must not change once it is complete.
KEPT = ("val_accuracy", "latency_ms", "size_mb")


@dataclass(frozen=True)
class SoakPlan:
    """What the soak does: how many searches, how many at a time, which faults."""

    searches: int = 20
    max_running: int = 2
    kills: int = 2
    read_only: bool = True
    read_only_max_s: float = 60.0  # the database stays read-only until a worker ends under it, or this
    pollers: int = 4
    search: dict[str, Any] = field(default_factory=lambda: dict(SOAK_SEARCH))
    timeout_s: float = 1800.0  # for the whole soak; a search still open then is a violation


@dataclass(frozen=True)
class Request:
    """One request as the client saw it (monotonic seconds; ``status`` None: no answer)."""

    started: float
    ended: float
    method: str
    route: str
    status: int | None
    error: str | None = None

    @property
    def code(self) -> str:
        return NO_ANSWER if self.status is None else str(self.status)

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000


@dataclass(frozen=True)
class Window:
    """A fault, from when it began to when it was over (the server answering again, the database
    writable again)."""

    kind: str  # "kill", "kill with workers", "read-only"
    start: float
    end: float

    def overlaps(self, r: Request) -> bool:
        return r.started <= self.end and r.ended >= self.start


@dataclass(frozen=True)
class SoakResult:
    """The figures of one soak and what did not hold (``violations``, empty when all did)."""

    searches: int
    states: dict[str, int]
    failures: dict[str, str]  # search id -> its error, for those that failed
    requests: int
    by_code: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    recovered: int  # searches a kill interrupted that were resumed and ended done
    trials_complete: int
    trials_requeued: int  # trials cut by a kill and run again
    faults: tuple[Window, ...]
    read_only_applied: bool
    duration_s: float
    violations: tuple[str, ...]
    work: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Client:
    """Requests to the server, each one recorded (thread-safe)."""

    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.log: list[Request] = []
        self.lock = threading.Lock()

    def call(self, method: str, path: str, route: str, body: dict | None = None) -> tuple[int | None, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
        })
        started, status, payload, error = time.monotonic(), None, None, None
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, payload = response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            status = exc.code
            with contextlib.suppress(Exception):
                payload = json.load(exc)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = type(exc).__name__ if not isinstance(exc, urllib.error.URLError) else str(exc.reason)
        with self.lock:
            self.log.append(Request(started, time.monotonic(), method, route, status, error))
        return status, payload


class _Server:
    """``edgepareto serve`` in its own process group, restartable on the same port and database."""

    def __init__(self, work: Path, token_file: Path, port: int, plan: SoakPlan, db_url: str) -> None:
        self.work, self.port = work, port
        self.command = [
            sys.executable, "-m", "search", "serve", "--port", str(port), "--runs-dir", str(work / "runs"),
            "--data-root", str(work), "--db", db_url, "--max-running", str(plan.max_running),
            "--token-file", str(token_file),
        ]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        with (self.work / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.work, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.work}/server.log")
            url = f"http://127.0.0.1:{self.port}/healthz"
            with contextlib.suppress(OSError, http.client.HTTPException), \
                    urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer in {timeout:.0f} s; see {self.work}/server.log")

    def workers(self) -> list[int]:
        """The server's live child processes (its search workers)."""
        return children(self.proc.pid) if self.proc is not None else []

    def kill(self, with_workers: bool) -> None:
        """SIGKILL the server (and, ``with_workers``, each worker's process group)."""
        assert self.proc is not None
        workers = self.workers()
        self.proc.kill()
        self.proc.wait()
        if with_workers:
            for pid in workers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (running searches are interrupted and queued), then whatever is left is killed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.workers()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[bool]:
    """The folder and its files read-only for the block; yields whether that took effect (a write into
    the folder fails). Under root permissions stop nothing, so the immutable flag is used there."""
    paths = [*sorted(p for p in folder.iterdir() if p.is_file()), folder]
    modes = {p: p.stat().st_mode for p in paths}
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None
    if immutable:
        subprocess.run(["chattr", "+i", *map(str, paths)], check=False, capture_output=True)
    else:
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
    probe = folder / f".soak-probe-{secrets.token_hex(4)}"
    try:
        probe.touch()
    except OSError:
        applied = True
    else:
        probe.unlink()
        applied = False
    try:
        yield applied
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", *map(str, reversed(paths))], check=False, capture_output=True)
        for p, mode in modes.items():
            with contextlib.suppress(OSError):
                p.chmod(mode & 0o7777)


class Soak:
    """One soak: the server, the client, the searches and the faults (see the module doc)."""

    def __init__(self, plan: SoakPlan, work: Path, log: Callable[[str], None]) -> None:
        self.plan, self.work, self.log = plan, work, log
        (work / "runs").mkdir(parents=True, exist_ok=True)
        (work / "jobs").mkdir(exist_ok=True)
        self.db = work / "jobs" / "jobs.db"
        token = secrets.token_hex(16)
        (work / "token").write_text(token)
        port = _free_port()
        self.server = _Server(work, work / "token", port, plan, f"sqlite:///{self.db}")
        self.client = _Client(port, token)
        self.ids: list[str] = []
        self.faults: list[Window] = []
        self.seen: dict[tuple[str, int], dict[str, Any]] = {}  # trials seen COMPLETE, first sighting
        self.states: dict[str, dict[str, Any]] = {}  # each search's latest status
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.read_only_applied = False
        self.complete = self.requeued = 0  # from the studies, at the end

    # ---- the run --------------------------------------------------------------------------------

    def run(self) -> SoakResult:
        started = time.monotonic()
        violations: list[str] = []
        self.server.start()
        pollers: list[threading.Thread] = []
        try:
            self.log(f"soak: {self.plan.searches} searches at once, --max-running {self.plan.max_running}")
            with ThreadPoolExecutor(max_workers=self.plan.searches) as pool:
                answers = list(pool.map(lambda _i: self.submit(), range(self.plan.searches)))
            violations += [f"submit answered {s}: {b}" for s, b in answers if s != 202]
            pollers = [threading.Thread(target=self.poll, args=(i,), daemon=True)
                       for i in range(self.plan.pollers)]
            for thread in pollers:
                thread.start()
            deadline = started + self.plan.timeout_s
            for i, fault in enumerate(self.schedule()):
                self.wait_for_fault(i, fault, deadline)
                self.inject(fault)
            violations += self.wait_all(deadline)
        finally:
            self.done.set()
            for thread in pollers:
                thread.join(timeout=90)
            final = self.final_reads()
            self.server.stop()
        violations += final
        violations += self.check_studies() + self.check_requests()
        return self.result(time.monotonic() - started, violations)

    def submit(self) -> tuple[int | None, Any]:
        status, body = self.client.call("POST", "/v1/searches", "submit", self.plan.search)
        if status == 202:
            with self.lock:
                self.ids.append(body["id"])
        return status, body

    def schedule(self) -> list[str]:
        """The faults in order: kills alone and with workers alternating, the read-only database after
        the first kill (its window then lasts until the end of a search the kill interrupted)."""
        kills = ["kill" if i % 2 == 0 else "kill with workers" for i in range(self.plan.kills)]
        if self.plan.read_only:
            kills.insert(min(1, len(kills)), "read-only")
        return kills

    def poll(self, seed: int) -> None:
        """Status, trials and the list of random searches, until the soak ends."""
        rng = random.Random(seed)
        while not self.done.is_set():
            with self.lock:
                ids = list(self.ids)
            if not ids:
                time.sleep(0.1)
                continue
            job = rng.choice(ids)
            kind = rng.choices(("status", "trials", "list"), weights=(5, 4, 1))[0]
            if kind == "status":
                status, body = self.client.call("GET", f"/v1/searches/{job}", "status")
            elif kind == "trials":
                status, body = self.client.call("GET", f"/v1/searches/{job}/trials", "trials")
                if status == 200:
                    self.note_trials(job, body["trials"])
            else:
                status, body = self.client.call("GET", "/v1/searches", "list")
            time.sleep(0.1 if status is not None else 0.25)

    def note_trials(self, job: str, rows: list[dict[str, Any]]) -> None:
        with self.lock:
            for row in rows:
                if row.get("state") == "COMPLETE":
                    self.seen.setdefault((job, int(row["trial"])), {k: row.get(k) for k in KEPT})

    def listing(self) -> dict[str, dict[str, Any]]:
        """Every search by id, as the list route shows it (the previous one while there is no answer)."""
        status, body = self.client.call("GET", "/v1/searches", "list")
        if status == 200:
            with self.lock:
                self.states = {s["id"]: s for s in body["searches"]}
        with self.lock:
            return dict(self.states)

    def finals(self) -> int:
        return sum(1 for s in self.listing().values() if s["state"] in FINAL)

    def wait_for_fault(self, index: int, fault: str, deadline: float) -> None:
        """Until a share of the searches has ended (spread over the faults), then, if it comes within a
        minute, until the fault can hit something: for a kill, a running search with a trial complete
        and trials to go; for the read-only database, a running worker (whose end it must outlast)."""
        faults = len(self.schedule())
        threshold = min(math.ceil(self.plan.searches * (index + 1) / (faults + 1)), self.plan.searches - 1)
        while self.finals() < threshold and time.monotonic() < deadline:
            time.sleep(0.5)
        until = min(time.monotonic() + 60, deadline)
        while time.monotonic() < until:
            if fault == "read-only" and self.server.workers():
                return
            running = [s["progress"] for s in self.listing().values() if s["state"] == "running"]
            if fault != "read-only" and any(
                p.get("complete", 0) >= 1 and p.get("trials_finished", 0) < p.get("trials_total", 0)
                for p in running
            ):
                return
            time.sleep(0.2)

    def inject(self, fault: str) -> None:
        begin = time.monotonic()
        if fault == "read-only":
            self.read_only_window(begin)
            return
        workers = len(self.server.workers())
        self.server.kill(with_workers=fault == "kill with workers")
        self.log(f"soak: {fault}: SIGKILL the server ({workers} worker(s) running"
                 f"{', killed too' if fault != 'kill' else ', left running'}); restarting")
        self.server.start()
        self.faults.append(Window(fault, begin, time.monotonic()))

    def read_only_window(self, begin: float) -> None:
        """The jobs database read-only until one of the server's workers has ended under it (so the
        server must record that end once it can), or ``read_only_max_s``; searches are submitted
        meanwhile (refused; one accepted anyway joins the soak's searches)."""
        workers = set(self.server.workers())
        with read_only(self.db.parent) as applied:
            self.read_only_applied = applied
            self.log(f"soak: jobs database read-only ({'in effect' if applied else 'NOT in effect'}) "
                     f"with {len(workers)} worker(s) running")
            until = begin + (self.plan.read_only_max_s if workers else 5.0)
            while time.monotonic() < until and not workers - set(self.server.workers()):
                self.submit()
                time.sleep(0.5)
            time.sleep(2)  # a few scheduler passes meet the refusing database
            self.submit()
        self.faults.append(Window("read-only", begin, time.monotonic()))
        self.log(f"soak: jobs database writable again after {time.monotonic() - begin:.1f} s")

    def wait_all(self, deadline: float) -> list[str]:
        last = -1
        while time.monotonic() < deadline:
            with self.lock:
                ids = list(self.ids)
            states = self.listing()
            ended = sum(1 for i in ids if states.get(i, {}).get("state") in FINAL)
            if ended != last:
                self.log(f"soak: {ended}/{len(ids)} searches ended")
                last = ended
            if ended == len(ids):
                return []
            time.sleep(1)
        open_ = [i for i in self.ids if self.states.get(i, {}).get("state") not in FINAL]
        return [f"search {i} still {self.states.get(i, {}).get('state')} at the soak's deadline"
                for i in open_]

    # ---- the checks -----------------------------------------------------------------------------

    def final_reads(self) -> list[str]:
        """Each search's last status and trials through the API: ended, and failed only with a reason."""
        out = []
        for job in self.ids:
            status, body = self.client.call("GET", f"/v1/searches/{job}", "status")
            if status != 200:
                out.append(f"search {job}: final status answered {status}")
                continue
            self.states[job] = body
            if body["state"] not in ("done", "failed"):
                out.append(f"search {job} ended {body['state']}")
            if body["state"] == "failed" and not (body.get("error") or "").strip():
                out.append(f"search {job} failed without a reason")
            status, trials = self.client.call("GET", f"/v1/searches/{job}/trials", "trials")
            if status != 200:
                out.append(f"search {job}: final trials answered {status}")
                continue
            rows = {int(r["trial"]): r for r in trials["trials"]}
            for (seen_job, number), kept in self.seen.items():
                row = rows.get(number) if seen_job == job else None
                if seen_job == job and (row is None or row.get("state") != "COMPLETE"):
                    out.append(f"search {job}: trial {number} was complete and is now "
                               f"{row.get('state') if row else 'gone'}")
                elif seen_job == job and not _same(kept, {k: row.get(k) for k in KEPT}):
                    out.append(f"search {job}: trial {number} changed from {kept} to {row}")
        return out

    def check_studies(self) -> list[str]:
        """From each run's study: nothing left running, the budget counted exactly once, every cut trial
        run again exactly once, and every trial seen complete still complete."""
        import optuna

        out = []
        for job in self.ids:
            db = self.work / "runs" / job / "study.db"
            state = self.states.get(job, {}).get("state")
            if not db.is_file():
                if state == "done":
                    out.append(f"search {job} is done without a study")
                continue
            try:
                storage = optuna.storages.RDBStorage(study_url(db), skip_table_creation=True)
                try:
                    trials = optuna.load_study(study_name=job, storage=storage).get_trials(deepcopy=False)
                finally:
                    storage.engine.dispose()
            except Exception as exc:  # a search that failed before its study was made
                if state == "done":
                    out.append(f"search {job} is done, and its study cannot be read: {one_line(exc, 200)}")
                continue
            out += _study_violations(job, state, trials, int(self.plan.search.get("trials", 0)))
            self.complete += sum(1 for t in trials if t.state.name == "COMPLETE")
            self.requeued += sum(1 for t in trials if t.user_attrs.get("retry_of") is not None)
            complete = {t.number for t in trials if t.state.name == "COMPLETE"}
            out += [f"search {job}: trial {n} was seen complete; the study has it "
                    f"{next((t.state.name for t in trials if t.number == n), 'nowhere')}"
                    for (j, n) in self.seen if j == job and n not in complete]
        return out

    def check_requests(self) -> list[str]:
        """No 5xx but while the database was read-only; an answer to every request but while the
        server was down."""
        read_only = [w for w in self.faults if w.kind == "read-only"]
        down = [w for w in self.faults if w.kind != "read-only"]
        out = []
        for r in self.client.log:
            if r.status is not None and r.status >= 500 and not any(w.overlaps(r) for w in read_only):
                out.append(f"{r.method} {r.route} answered {r.status} with the database writable")
            if r.status is None and not any(w.overlaps(r) for w in down):
                out.append(f"{r.method} {r.route} had no answer ({r.error}) with the server up")
        return out

    def result(self, duration: float, violations: list[str]) -> SoakResult:
        answered = [r.ms for r in self.client.log if r.status is not None]
        states = Counter(self.states.get(i, {}).get("state", "unknown") for i in self.ids)
        attempts = _attempts(self.db)
        return SoakResult(
            searches=len(self.ids), states=dict(states), requests=len(self.client.log),
            failures={i: str(self.states[i].get("error")) for i in self.ids
                      if self.states.get(i, {}).get("state") == "failed"},
            by_code=dict(sorted(Counter(r.code for r in self.client.log).items())),
            p50_ms=_pct(answered, 50), p99_ms=_pct(answered, 99), max_ms=max(answered, default=0.0),
            recovered=sum(1 for i in self.ids if attempts.get(i, 0) > 1
                          and self.states.get(i, {}).get("state") == "done"),
            trials_complete=self.complete, trials_requeued=self.requeued,
            faults=tuple(self.faults), read_only_applied=self.read_only_applied, duration_s=duration,
            violations=tuple(violations), work=str(self.work),
        )


def _study_violations(job: str, state: str | None, trials: list, budget: int) -> list[str]:
    """What must hold in one run's study (``trials``: its FrozenTrials): numbers used once, every trial
    cut by an interruption run again exactly once, every retry of a cut trial; when the search is done,
    nothing left open and exactly ``budget`` trials counted."""
    out = []
    numbers = [t.number for t in trials]
    if numbers != list(range(len(numbers))):
        out.append(f"search {job}: trial numbers {numbers}")
    interrupted = {t.number for t in trials if t.user_attrs.get("interrupted")}
    cut = {t.number for t in trials if t.number in interrupted
           and str(t.user_attrs.get("fail_reason", "")).startswith("interrupted")}
    retries = Counter(t.user_attrs["retry_of"] for t in trials if t.user_attrs.get("retry_of") is not None)
    out += [f"search {job}: trial {n} was run again {k} times" for n, k in retries.items() if k > 1]
    out += [f"search {job}: trial {n} was run again but never cut" for n in retries if n not in interrupted]
    if state == "done":
        left = [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
        if left:
            out.append(f"search {job} is done with trials {left} still open")
        counted = [t for t in trials if t.state.name in ("COMPLETE", "FAIL", "PRUNED")
                   and t.number not in interrupted]
        if len(counted) != budget:
            out.append(f"search {job} is done with {len(counted)} trials counted, not {budget}")
        out += [f"search {job}: cut trial {n} never ran again" for n in sorted(cut - set(retries))]
    return out


def _attempts(db: Path) -> dict[str, int]:
    """How many times each job was started, from the jobs database."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        return dict(con.execute("SELECT id, attempts FROM edgepareto_jobs").fetchall())


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for key in a:
        x, y = a[key], b.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif x != y:
            return False
    return True


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def soak_service(
    plan: SoakPlan | None = None, work: Path | None = None, runs_dir: str | None = "runs",
    log: Callable[[str], None] = print,
) -> SoakResult:
    """Run the soak (``plan``, default ``SoakPlan()``) in ``work`` (default a new temporary folder; a
    caller may seed ``work/runs`` first, e.g. with a trained baseline); with ``runs_dir``, save its
    figures and every request under ``runs_dir/bench/service-soak-DATE.{json,csv}``."""
    work = work or Path(tempfile.mkdtemp(prefix="bench-soak-"))
    soak = Soak(plan or SoakPlan(), work, log)
    result = soak.run()
    if runs_dir is not None:
        out = Path(runs_dir) / "bench" / f"service-soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=1, default=str))
        with out.with_suffix(".csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["started_s", "ms", "method", "route", "status", "error"])
            t0 = min((r.started for r in soak.client.log), default=0.0)
            for r in soak.client.log:
                row = [f"{r.started - t0:.3f}", f"{r.ms:.1f}", r.method, r.route, r.code, r.error or ""]
                writer.writerow(row)
        log(f"saved {out} and {out.with_suffix('.csv').name}")
    return result


def format_soak(result: SoakResult) -> str:
    """The figures as a few lines, then each violation."""
    codes = ", ".join(f"{code}: {n}" for code, n in result.by_code.items())
    faults = "; ".join(f"{w.kind} ({w.end - w.start:.1f} s)" for w in result.faults)
    lines = [
        f"searches          {result.searches}: " + ", ".join(f"{k} {v}" for k, v in result.states.items()),
        f"requests          {result.requests} ({codes})",
        f"latency           p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
        f"max {result.max_ms:.1f} ms",
        f"faults            {faults}" + ("" if result.read_only_applied else " (read-only NOT in effect)"),
        f"recovered         {result.recovered} search(es) resumed after a kill; "
        f"{result.trials_requeued} trial(s) cut and run again; {result.trials_complete} complete",
        f"duration          {result.duration_s:.0f} s",
        *(f"failed            {job}: {error}" for job, error in result.failures.items()),
        "invariants        "
        + ("all held" if not result.violations else f"{len(result.violations)} violated:"),
    ]
    return "\n".join(lines + [f"  - {v}" for v in result.violations])
