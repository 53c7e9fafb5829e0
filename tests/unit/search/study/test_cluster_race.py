"""Several processes on one SQLite study: the give-back race for the run's last place, and recovery of a
trial whose process died. The processes are forked children running the engine's real loop
(``_loop``) with a lightweight objective."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import time
import traceback
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.config.run_config import RunConfig
from search.study import engine
from search.study.cluster import (
    OWNER_ATTR,
    finished_count,
    give_back,
    open_storage,
    owner,
    recover,
    running_count,
    surplus,
)
from search.study.interrupt import Interrupts
from tests.support.studies import FakeObjective, dead_pid, new_study, quiet_progress, sqlite_url

pytestmark = pytest.mark.timeout(240)  # a worker waiting for a place that never frees, say

FORK = mp.get_context("fork")
#: Longest wait for a child or a barrier: only reached when something is broken.
LIMIT_S = 60
GIVEN_BACK = "not run: another process took the run's last place at the same moment"
DIST = {
    "x": optuna.distributions.FloatDistribution(0.0, 1.0),
    "y": optuna.distributions.IntDistribution(1, 8),
}


def gated(study: optuna.Study, barrier) -> optuna.Study:
    """This process's first ``ask`` waits until every process is about to ask (each saw the run's
    last place free), then until every one has its trial RUNNING in storage."""
    ask = study.ask
    first = [barrier is not None]

    def ask_together(*args, **kwargs):
        if not first[0]:
            return ask(*args, **kwargs)
        first[0] = False
        barrier.wait(timeout=LIMIT_S)
        trial = ask(*args, **kwargs)
        barrier.wait(timeout=LIMIT_S)
        return trial

    study.ask = ask_together
    return study


def worker(url: str, name: str, trials: int, run_dir: str, barrier, results) -> None:
    """One process of the run: the engine's loop until the run has ``trials`` trials."""
    try:
        engine.WAIT_S = 0.02  # this child's copy: poll the study often while the other one finishes
        cfg = RunConfig(trials=trials)
        study = optuna.load_study(
            study_name=name, storage=open_storage(url), sampler=optuna.samplers.RandomSampler(os.getpid())
        )
        gated(study, barrier)
        objective = FakeObjective(cfg, Path(run_dir))
        progress, stream = quiet_progress(cfg)
        ran = engine._loop(cfg, study, objective, progress, Interrupts(), stop_on_baseline_failure=False)
        results.put({"pid": os.getpid(), "ran": ran, "calls": objective.calls, "log": stream.getvalue()})
    except BaseException:
        results.put({"pid": os.getpid(), "error": traceback.format_exc()})


def race(tmp_path: Path, study: optuna.Study, url: str, trials: int, processes: int = 2,
         barrier: bool = True) -> list[dict]:
    gate = FORK.Barrier(processes) if barrier else None
    results = FORK.Queue()
    procs = [
        FORK.Process(target=worker, args=(url, study.study_name, trials, str(tmp_path), gate, results))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    answers = []
    try:
        for _ in procs:
            answers.append(results.get(timeout=LIMIT_S))
    except queue.Empty:
        raise AssertionError(f"a worker gave no answer; got {answers}") from None
    finally:
        for p in procs:
            p.join(timeout=LIMIT_S)
            if p.is_alive():
                p.kill()
    errors = [a["error"] for a in answers if "error" in a]
    assert not errors, "\n".join(errors)
    return sorted(answers, key=lambda a: a["ran"])


def prefilled(tmp_path: Path, done: int) -> tuple[optuna.Study, str]:
    cfg = RunConfig()
    study = new_study(tmp_path, cfg, name="race")
    for i in range(done):
        params = {"x": 0.5, "y": 1 + i}
        study.add_trial(create_trial(values=[0.5, 1.0, 0.5], params=params, distributions=DIST))
    return study, sqlite_url(tmp_path)


def test_two_processes_asking_for_the_last_place_run_one_trial(tmp_path):
    study, url = prefilled(tmp_path, done=2)
    idle, busy = race(tmp_path, study, url, trials=3)
    assert (idle["ran"], busy["ran"]) == (0, 1)
    assert idle["calls"] == [] and busy["calls"] == [2]  # the lower-numbered trial keeps the place
    study = optuna.load_study(study_name="race", storage=url)
    trials = study.get_trials()
    assert [t.state for t in trials[:4]] == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    assert trials[2].user_attrs[OWNER_ATTR].endswith(f":{busy['pid']}")
    # the idle process gave its trial back (and again, had it looked while the last one was told)
    for given_back in trials[3:]:
        assert given_back.state == TrialState.FAIL
        assert given_back.user_attrs["interrupted"] is True
        assert given_back.user_attrs["fail_reason"] == GIVEN_BACK
        assert given_back.user_attrs[OWNER_ATTR].endswith(f":{idle['pid']}")
    assert finished_count(study) == 3


@pytest.mark.xfail(strict=False, reason=(
    "source bug (seen in 15 of 15 runs, not guaranteed): on SQLite, Optuna's pop of a WAITING trial "
    "is not atomic across processes (no row lock), so both processes take the same enqueued trial and "
    "run it; the second tell is skipped silently, misreported as 're-queued', or raises "
    "UpdateFinishedTrialError out of _loop"
))
def test_two_processes_asking_for_the_last_place_from_the_queue_run_one_trial(tmp_path):
    study, url = prefilled(tmp_path, done=2)
    study.enqueue_trial({"x": 0.125, "y": 5}, user_attrs={"recipe": True})
    study.enqueue_trial({"x": 0.875, "y": 7}, user_attrs={"recipe": True})
    idle, busy = race(tmp_path, study, url, trials=3)
    assert (idle["ran"], busy["ran"]) == (0, 1)
    assert busy["calls"] == [2]
    study = optuna.load_study(study_name="race", storage=url)
    trials = study.get_trials()
    assert [t.state.name for t in trials[:3]] == ["COMPLETE"] * 3
    assert trials[2].params == {"x": 0.125, "y": 5}
    assert finished_count(study) == 3
    # the other recipe was given back (perhaps more than once, if the idle process looked again
    # while the last trial was being told) and waits in the queue for a later run
    *given_back, waiting = trials[3:]
    assert given_back and all(t.user_attrs["fail_reason"] == GIVEN_BACK for t in given_back)
    assert waiting.state == TrialState.WAITING
    assert waiting.system_attrs["fixed_params"] == {"x": 0.875, "y": 7}


def test_two_processes_never_run_more_than_the_budget(tmp_path):
    study, url = prefilled(tmp_path, done=0)
    answers = race(tmp_path, study, url, trials=8, barrier=False)
    assert sum(a["ran"] for a in answers) == 8
    trials = optuna.load_study(study_name="race", storage=url).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    assert finished_count(optuna.load_study(study_name="race", storage=url)) == 8
    for t in trials:  # everything else was a place given back, never a second run of a trial
        assert t.state == TrialState.COMPLETE or t.user_attrs["fail_reason"] == GIVEN_BACK
    assert sorted(n for a in answers for n in a["calls"]) == sorted(t.number for t in complete)


# -- the same rules, one step at a time in this process ---------------------------------------------

def test_surplus_keeps_the_lowest_numbered_running_trials(tmp_path):
    study = new_study(None, RunConfig())
    study.add_trial(create_trial(values=[0.5, 1.0, 0.5]))
    study.add_trial(create_trial(state=TrialState.FAIL))
    first, second, third = study.ask(), study.ask(), study.ask()
    assert running_count(study) == 3
    assert [surplus(study, t.number, 4) for t in (first, second, third)] == [False, False, True]
    assert [surplus(study, t.number, 3) for t in (first, second, third)] == [False, True, True]
    assert [surplus(study, t.number, 2) for t in (first, second, third)] == [True, True, True]
    give_back(study, third)
    assert finished_count(study) == 2  # a given-back trial is finished but never counted
    frozen = study.get_trials()[third.number]
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs == {OWNER_ATTR: owner(), "interrupted": True, "fail_reason": GIVEN_BACK}
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 0  # sampled, not enqueued: gone


def test_an_enqueued_trial_given_back_returns_to_the_queue():
    study = new_study(None, RunConfig())
    study.add_trial(create_trial(values=[0.5, 1.0, 0.5]))
    study.enqueue_trial({"x": 0.125, "y": 5}, user_attrs={"baseline": True})
    study.enqueue_trial({"x": 0.875, "y": 7}, user_attrs={"recipe": True})
    first, second = study.ask(DIST), study.ask(DIST)
    assert (first.params, second.params) == ({"x": 0.125, "y": 5}, {"x": 0.875, "y": 7})
    assert [surplus(study, t.number, 2) for t in (first, second)] == [False, True]
    give_back(study, second)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING", "FAIL", "WAITING"]
    assert trials[2].user_attrs["fail_reason"] == GIVEN_BACK
    assert trials[3].system_attrs["fixed_params"] == {"x": 0.875, "y": 7}
    assert trials[3].user_attrs == {"retry_of": 2}  # the recipe mark is not carried, a baseline's is
    study.tell(first, [0.9, 1.0, 1.0])
    assert finished_count(study) == 2


# -- recovery of a dead process's trial ------------------------------------------------------------

def ask_and_die(url: str, name: str) -> None:
    """A worker that takes a trial, tags it as its own, and dies before it ends."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    trial = study.ask(DIST)
    trial.set_user_attr(OWNER_ATTR, owner())
    study._storage.record_heartbeat(trial._trial_id)
    os._exit(0)


def test_recover_requeues_the_trial_of_a_process_that_died(tmp_path):
    study = new_study(tmp_path, RunConfig(), name="orphans")
    url = sqlite_url(tmp_path)
    child = FORK.Process(target=ask_and_die, args=(url, "orphans"))
    child.start()
    child.join(timeout=LIMIT_S)
    assert child.exitcode == 0
    [orphan] = study.get_trials()
    assert orphan.state == TrialState.RUNNING
    assert orphan.user_attrs[OWNER_ATTR] == f"{socket.gethostname()}:{child.pid}"

    assert recover(study) == [0]
    assert recover(study) == []  # once only
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["interrupted"] is True
    assert trials[0].user_attrs["fail_reason"] == "interrupted: its worker stopped mid-trial"
    assert trials[1].user_attrs == {"retry_of": 0}
    retry = study.ask(DIST)
    assert retry.number == 1 and retry.params == orphan.params
    assert finished_count(study) == 0


def test_recover_leaves_live_and_foreign_owners_to_their_heartbeat(tmp_path):
    study = new_study(None, RunConfig())
    mine = study.ask(DIST)
    mine.set_user_attr(OWNER_ATTR, owner())
    foreign = study.ask(DIST)
    foreign.set_user_attr(OWNER_ATTR, "another-host:1")
    untagged = study.ask(DIST)
    baseline = study.ask(DIST)
    baseline.set_user_attr(OWNER_ATTR, f"{socket.gethostname()}:{dead_pid()}")
    baseline.set_user_attr("baseline", True)
    assert recover(study) == [baseline.number]
    retry = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs for t in retry] == [{"retry_of": baseline.number, "baseline": True}]
    assert recover(study, everything=True) == [untagged.number]  # --resume: never started anywhere
    running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert running == [mine.number, foreign.number]


def test_recover_requeues_a_trial_whose_heartbeat_went_stale(tmp_path):
    """A worker on another machine that died (or lost its network): its heartbeat goes stale."""
    storage = optuna.storages.RDBStorage(sqlite_url(tmp_path), heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, directions=RunConfig().directions)
    trial = study.ask(DIST)
    trial.set_user_attr(OWNER_ATTR, "a-machine-that-lost-its-network:4242")
    storage.record_heartbeat(trial._trial_id)
    limit = time.monotonic() + LIMIT_S
    while not storage._get_stale_trial_ids(study._study_id):  # Optuna's own view: stale
        assert time.monotonic() < limit, "the heartbeat never went stale"
        time.sleep(0.1)
    assert recover(study) == [0]
    assert study.get_trials()[0].user_attrs["fail_reason"] == "interrupted: its worker stopped mid-trial"


@pytest.fixture(autouse=True)
def _no_leftover_children():
    yield
    for child in FORK.active_children():
        child.kill()
