"""The PostgreSQL fixture serves Optuna's RDBStorage to several processes at once; a run rides out a
database restart."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.study.cluster import EXIT_STORAGE, OWNER_ATTR, finished_count
from tests.e2e.test_cluster import finish, popen, study_of, wait_for
from tests.support import postgres
from tests.support.cli import ROOT, TINY
from tests.support.runs import building, slow_space

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

WORKER = """
import sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="shared", storage=sys.argv[1])
study.optimize(lambda trial: trial.suggest_float("x", -1.0, 1.0) ** 2, n_trials=3)
"""


def test_two_processes_share_a_study(fresh_database: str) -> None:
    optuna.create_study(study_name="shared", storage=fresh_database, direction="minimize")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, fresh_database],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out

    trials = optuna.load_study(study_name="shared", storage=fresh_database).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 6
    assert sorted(t.number for t in trials) == list(range(6))


def test_fresh_databases_are_separate(postgres_url: str, fresh_database: str) -> None:
    assert fresh_database != postgres_url
    optuna.create_study(study_name="only-here", storage=fresh_database)
    assert optuna.get_all_study_names(storage=postgres_url) == []



# ---------------------------------------------------------------- a database restart under running workers

RESTART_TRIALS = 5
#: ``edgepareto worker`` with its imports (torch, timm, onnxruntime: many seconds on a busy machine)
#: done before the run exists; it starts when the file argv[1] appears, so it joins while trials remain.
WORKER_WHEN_READY = """
import pathlib, sys, time
from search.cli.main import main
import search.study.engine
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.05)
sys.exit(main(sys.argv[2:]))
"""


def _building(storage: optuna.storages.RDBStorage, name: str, run: Path, pid: int) -> bool:
    """Whether process ``pid`` is building a trial of the run right now (one storage for every look:
    a new one per look would open a connection each time)."""
    study = optuna.load_study(study_name=name, storage=storage)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(t.user_attrs.get(OWNER_ATTR, "").endswith(f":{pid}") and building(run, t.number)
               for t in running)


@pytest.mark.timeout(300)
def test_a_database_restart_under_running_workers(runs_dir, tmp_path):
    """PostgreSQL stops while a worker is mid-trial and the driver runs too, and starts again later.
    The driver (default --db-retry-s) waits, carries on and finishes; the worker, whose limit (2 s) is
    shorter than the outage, stops with one line (exit 75), and the driver re-queues its trial. The
    study adds up: every trial counted once, the cut one run again once, none failed by the outage."""
    name, run = "db-restart", runs_dir / "db-restart"
    with postgres.restartable() as server:
        storage = postgres.new_database(server.url)
        go = tmp_path / "go"
        args = ["worker", name, "--storage", storage, "--quiet", "--db-retry-s", "2"]
        worker = subprocess.Popen([sys.executable, "-c", WORKER_WHEN_READY, str(go), *args], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        driver = popen("search", "--runs-dir", str(runs_dir), "--name", name, "--trials",
                       str(RESTART_TRIALS), "--storage", storage, "--space", str(slow_space(tmp_path)), *TINY)
        wait_for(lambda: study_of(storage, name, run) is not None, [driver, worker], what="the study")
        go.touch()
        look = optuna.storages.RDBStorage(storage)
        wait_for(lambda: _building(look, name, run, worker.pid), [driver, worker], what="a worker trial")
        look.engine.dispose()
        server.stop()
        stopped = time.monotonic()
        _, err = worker.communicate(timeout=60)  # its heartbeat (every 5 s) finds the database gone
        time.sleep(max(0.0, stopped + 6 - time.monotonic()))  # down longer than one heartbeat period
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        server.start()
        driver_log = finish(driver)
        study = optuna.load_study(study_name=name, storage=storage)
        trials, counted = study.get_trials(deepcopy=False), finished_count(study)

    # the worker: one line, and the exit status that says "the storage", not "bad input"
    assert worker.returncode == EXIT_STORAGE, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("edgepareto: ")]
    assert "unreachable" in said[0] and "retrying for up to 2 s" in said[0], err[-3000:]
    errors = [line for line in said if line.startswith("edgepareto: error:")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err[-3000:]
    assert "--db-retry-s 2" in errors[0] and "re-queue" in errors[0], errors
    # the driver: lost the database, waited for it, carried on
    assert "unreachable" in driver_log and "reachable again after" in driver_log, driver_log[-3000:]
    # the study: the worker's cut trial failed as interrupted and ran again exactly once; nothing else
    # was cut (a trial given back unrun, "not run: ...", is the only other kind of interrupted trial)
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    cut = [t for t in interrupted if not t.user_attrs["fail_reason"].startswith("not run")]
    assert len(cut) == 1, [(t.number, t.user_attrs) for t in interrupted]
    assert cut[0].state == TrialState.FAIL and cut[0].user_attrs[OWNER_ATTR].endswith(f":{worker.pid}")
    retries = [t for t in trials if t.user_attrs.get("retry_of") == cut[0].number]
    assert len(retries) == 1 and retries[0].params == cut[0].params
    assert [t.number for t in trials] == list(range(len(trials)))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert counted == RESTART_TRIALS  # nothing lost, nothing counted twice
    assert all(t.state == TrialState.COMPLETE for t in trials if t not in interrupted), [  # none failed by it
        (t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials
    ]
    assert (run / "pareto.csv").is_file()
