"""Several processes on one study in a real PostgreSQL: ``edgepareto worker`` joins a driver's run,
trial counts add up, a worker killed mid-trial loses nothing, and ``--trial-timeout`` stops a trial."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.study.cluster import OWNER_ATTR, finished_count
from tests.support.cli import ROOT, TINY, run_cli
from tests.support.runs import building, seed, slow_space

pytestmark = pytest.mark.slow

TRIALS = 8
#: How long the driver waits, stopped, for the worker to take its first trial (heartbeat grace: 30 s).
WORKER_START_S = 20


def popen(*args: str, staging: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "EDGEPARETO_STAGING": str(staging)} if staging else None
    return subprocess.Popen(
        [sys.executable, "-m", "search", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env,
    )


def start_run(
    runs: Path | str, name: str, storage: str, space: Path, staging: Path | None = None
) -> subprocess.Popen:
    return popen(
        "search", "--runs-dir", str(runs), "--name", name, "--trials", str(TRIALS), "--storage", storage,
        "--space", str(space), *TINY, staging=staging,
    )


def wait_for(condition, procs: list[subprocess.Popen], limit: float = 240, what: str = "") -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        for proc in procs:
            assert proc.poll() is None, f"exited early: {proc.communicate()[1][-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def study_of(storage: str, name: str, run: Path | None = None) -> optuna.Study | None:
    """The run's study once the driver made it (``run``: not before its folder exists, so that this
    process does not create the storage's tables at the same moment as the driver)."""
    if run is not None and not (run / "run.yaml").is_file():
        return None
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out + err


def owners(study: optuna.Study) -> Counter:
    return Counter(t.user_attrs.get(OWNER_ATTR, "").rpartition(":")[2] for t in study.get_trials())


def check_nothing_lost(study: optuna.Study, run: Path) -> None:
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(len(trials)))  # no number used twice
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert finished_count(study) == TRIALS  # exactly the requested number counted
    for t in trials:
        assert (run / "trials" / f"{t.number:04d}" / "params.json").is_file()
        if t.state == TrialState.COMPLETE:
            assert (run / "trials" / f"{t.number:04d}" / "model.onnx").is_file()
    recipes = [t for t in trials if t.user_attrs.get("recipe") and not t.user_attrs.get("interrupted")]
    assert len({tuple(sorted(t.params.items())) for t in recipes}) == len(recipes)  # each ran once


@pytest.mark.timeout(600)
def test_two_workers_share_a_postgres_study(tmp_path, fresh_database, tiny_baseline, capfd):
    """Driver and worker each work in a staging folder of their own (as on two machines) and share
    artifacts through an fsspec URL; the study lives in PostgreSQL. Machine a has the tiny baseline
    already (as after an earlier search there); machine b gets it through the shared root."""
    shared, name, storage = tmp_path / "shared", "shared", fresh_database
    url = f"file://{shared}"
    seed(tmp_path / "machine-a", tiny_baseline)
    driver = start_run(url, name, storage, slow_space(tmp_path), staging=tmp_path / "machine-a")
    wait_for(lambda: study_of(storage, name, tmp_path / "machine-a" / name) is not None, [driver],
             what="the study")
    # The driver waits (SIGSTOP) until the worker has taken a trial: on a fast machine it otherwise
    # ran all its trials before the worker had started. The pause stays well inside the heartbeat's
    # grace period (GRACE_S); after WORKER_START_S the driver goes on regardless.
    driver.send_signal(signal.SIGSTOP)
    try:
        worker = popen("worker", name, "--storage", storage, "--quiet", staging=tmp_path / "machine-b")

        def worker_took_one() -> bool:
            study = study_of(storage, name)
            return any(t.user_attrs.get(OWNER_ATTR, "").endswith(f":{worker.pid}")
                       for t in study.get_trials(deepcopy=False))

        deadline = time.monotonic() + WORKER_START_S
        while not worker_took_one() and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGCONT)
    worker_log, driver_log = finish(worker), finish(driver)
    study = study_of(storage, name)
    by_pid = owners(study)
    assert set(by_pid) == {str(driver.pid), str(worker.pid)}, by_pid  # both ran trials, nobody else
    assert sum(by_pid.values()) == len(study.trials)  # every trial ran in exactly one process
    assert f"ran {by_pid[str(worker.pid)]} trial(s)" in worker_log
    check_nothing_lost(study, shared / name)  # every trial's folder reached the shared root
    worker_trials = {f"{t.number:04d}" for t in study.trials if t.user_attrs[OWNER_ATTR].endswith(
        f":{worker.pid}") and not t.user_attrs.get("interrupted")}
    staged_b = {p.name for p in (tmp_path / "machine-b" / name / "trials").iterdir()}
    assert staged_b == worker_trials  # machine b wrote only its own trials locally
    assert "pareto" in driver_log and (shared / name / "pareto.csv").is_file()
    # the baseline machine a had reached machine b through the shared root
    assert (tmp_path / "machine-b" / ".cache" / "baselines").is_dir()
    code, out, err = run_cli(["show", name, "--runs-dir", str(tmp_path / "machine-a")], capfd)
    assert code == 0 and "baseline" in out, err


@pytest.mark.timeout(600)
def test_killed_worker_trial_is_requeued(runs_dir, tmp_path, fresh_database):
    runs, name, storage = runs_dir, "killed-worker", fresh_database
    driver = start_run(runs, name, storage, slow_space(tmp_path))
    wait_for(lambda: study_of(storage, name, runs / name) is not None, [driver], what="the study")
    worker = popen("worker", name, "--storage", storage, "--quiet")

    def worker_mid_trial() -> bool:
        running = study_of(storage, name).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return any(
            t.user_attrs.get(OWNER_ATTR, "").endswith(f":{worker.pid}") and building(runs / name, t.number)
            for t in running
        )

    wait_for(worker_mid_trial, [driver, worker], what="a trial of the worker")
    worker.kill()  # SIGKILL: no cleanup, the trial stays RUNNING in the storage
    worker.wait()
    finish(driver)  # the driver notices the dead worker, re-queues its trial and runs it
    study = study_of(storage, name)
    killed = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(killed) == 1 and killed[0].state == TrialState.FAIL
    assert killed[0].user_attrs[OWNER_ATTR].endswith(f":{worker.pid}")
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retries) == 1 and retries[0].params == killed[0].params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.FAIL)
    check_nothing_lost(study, runs / name)


@pytest.mark.timeout(300)
def test_trial_timeout_fails_the_trial_and_the_run_goes_on(tmp_path, capfd):
    space = tmp_path / "space.yaml"  # 10 epochs of distillation at 64 px take far longer than 5 s
    space.write_text("techniques:\n  distill: {enabled: always, epochs: 10}\n")
    args = ["search", "--runs-dir", str(tmp_path / "runs"), "--name", "t", "--trials", "3",
            "--space", str(space), "--trial-timeout", "5", "--warm-start", "off", *TINY,
            "--img-size", "64"]
    code, _, err = run_cli(args, capfd)
    assert code == 0, err
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'runs' / 't' / 'study.db'}")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]  # the baseline is quick
    for t in study.trials[1:]:
        assert t.user_attrs["fail_reason"].startswith("timeout: the trial ran longer than --trial-timeout 5")
        assert t.datetime_complete - t.datetime_start >= dt.timedelta(seconds=5)  # it ran its 5 s
