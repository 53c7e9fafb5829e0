"""One trial through ``run_trial``: how the objective's return, its exceptions and the
``--trial-timeout`` watchdog map to an ``Outcome`` (and to the trial's ``fail_reason``, made one line by
``search.core.text.reason``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from search.config.run_config import RunConfig
from search.core.errors import CandidateError, UserError
from search.core.layout import trial_dir
from search.core.text import reason
from search.study import runner
from search.study.cluster import OWNER_ATTR, owner
from search.study.constraints import is_feasible
from search.study.interrupt import Interrupts
from search.study.runner import EXIT_HUNG, Outcome, announce, run_trial
from search.study.watchdog import TrialTimeout
from tests.support.studies import FakeObjective, FakePlan, new_study, quiet_progress, sqlite_url

pytestmark = pytest.mark.timeout(120)

#: How long a "hanging" objective waits before giving up by itself: far beyond any timeout used here.
PATIENCE_S = 120


def ask(cfg: RunConfig) -> optuna.Trial:
    return new_study(None, cfg).ask()


def hang_until_stopped(record: dict):
    """An objective step that runs Python bytecode until something stops it (or PATIENCE_S pass)."""

    def behaviour(trial):
        end = time.monotonic() + PATIENCE_S
        record["started"] = True
        while time.monotonic() < end:
            threading.Event().wait(0.01)
        record["ran_to_the_end"] = True
        return None

    return behaviour


def test_a_returning_objective_is_complete_with_its_values(tmp_path):
    cfg = RunConfig()
    trial = ask(cfg)
    objective = FakeObjective(cfg, tmp_path, lambda t: [0.9, 1.5, 0.25])
    outcome = run_trial(trial, objective)
    assert outcome == Outcome(TrialState.COMPLETE, (0.9, 1.5, 0.25), None)
    assert trial.user_attrs[OWNER_ATTR] == owner()
    assert objective.published == [trial.number]


def test_a_candidate_error_is_a_failed_trial_with_its_reason(tmp_path):
    cfg = RunConfig()
    trial = ask(cfg)

    def broken(t):
        trial_dir(tmp_path, t.number).mkdir(parents=True)
        raise CandidateError("int8 export failed:\n  unsupported op   GridSample")

    outcome = run_trial(trial, FakeObjective(cfg, tmp_path, broken))
    reason = "CandidateError: int8 export failed: unsupported op GridSample"
    assert outcome == Outcome(TrialState.FAIL, None, reason)
    assert trial.user_attrs["fail_reason"] == reason
    metrics = json.loads((trial_dir(tmp_path, trial.number) / "metrics.json").read_text())
    assert metrics == {"state": "FAIL", "fail_reason": reason}


def test_any_other_exception_is_a_failed_trial_too(tmp_path):
    cfg = RunConfig()
    trial = ask(cfg)

    def crash(t):
        raise ZeroDivisionError("division by zero")

    outcome = run_trial(trial, FakeObjective(cfg, tmp_path, crash))
    assert (outcome.state, outcome.reason) == (TrialState.FAIL, "ZeroDivisionError: division by zero")
    assert not (tmp_path / "trials").exists()  # no folder made: no metrics.json written either


def test_a_user_error_is_raised_not_recorded(tmp_path):
    cfg = RunConfig()
    trial = ask(cfg)

    def unusable(t):
        raise UserError("agent http://10.0.0.7:8765 is not reachable")

    objective = FakeObjective(cfg, tmp_path, unusable)
    with pytest.raises(UserError, match="is not reachable"):
        run_trial(trial, objective)
    assert "fail_reason" not in trial.user_attrs
    assert objective.published == []


def test_a_failure_while_ctrl_c_is_pending_is_the_interrupt(tmp_path):
    cfg = RunConfig()
    trial = ask(cfg)
    interrupts = Interrupts()

    def swallowed(t):
        interrupts.requested = True
        raise RuntimeError("KeyboardInterrupt")

    with pytest.raises(KeyboardInterrupt):
        run_trial(trial, FakeObjective(cfg, tmp_path, swallowed), interrupts)
    assert "fail_reason" not in trial.user_attrs


@pytest.fixture
def python_ctrl_c():
    """Python's own SIGINT handling, as in the CLI's process. An earlier test in the same pytest
    process may have left another handler installed (Ray's driver, a server), and ``Interrupts``
    rightly leaves a handler it did not expect alone; the full suite failed here that way once."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_ctrl_c")
def test_a_ctrl_c_inside_a_finalizer_is_delivered_again_without_a_traceback(capfd):
    """SIGINT during a weakref callback or ``__del__`` (SQLAlchemy's, in garbage collection) cannot
    propagate there; Python would print "Exception ignored ... Traceback" and go on. Under
    ``Interrupts`` it prints nothing and propagates from the main thread's next instruction."""

    class Finalizer:
        def __del__(self):
            raise KeyboardInterrupt  # what the SIGINT handler raises when the signal lands here

    previous_hook = sys.unraisablehook
    reached = []
    with pytest.raises(KeyboardInterrupt), Interrupts() as interrupts:
        Finalizer()  # collected at once: its KeyboardInterrupt is unraisable
        for i in range(PATIENCE_S * 100):  # the re-delivered interrupt stops this loop
            reached.append(i)
            threading.Event().wait(0.01)
    assert interrupts.requested and len(reached) < PATIENCE_S * 100
    assert sys.unraisablehook is previous_hook
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "Traceback" not in err


@pytest.mark.usefixtures("python_ctrl_c")
def test_a_swallowed_ctrl_c_is_not_delivered_again_once_the_search_stopped():
    """The engine's check between trials may stop the search before the redelivery fires; the
    redelivery must then not raise a second KeyboardInterrupt into the CLI's exit path."""

    class Finalizer:
        def __del__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), Interrupts() as interrupts:
        Finalizer()
        interrupts.check()  # stops at once: the search is over before the redelivery fires
    interrupts.redelivery.join()
    total = sum(range(100_000))  # a pending interrupt would be raised in these instructions
    assert total > 0


def test_a_trial_that_cannot_be_published_fails(tmp_path):
    cfg = RunConfig()
    trial = ask(cfg)

    class Unpublishable(FakeObjective):
        def publish(self, number):
            raise OSError(28, "No space left on device")

    outcome = run_trial(trial, Unpublishable(cfg, tmp_path))
    reason = "cannot copy the trial to the shared runs root: OSError: [Errno 28] No space left on device"
    assert outcome == Outcome(TrialState.FAIL, None, reason)
    assert trial.user_attrs["fail_reason"] == reason


def test_the_trial_timeout_stops_a_running_objective(tmp_path):
    cfg = RunConfig(trial_timeout=0.5)
    trial = ask(cfg)
    record: dict = {}
    outcome = run_trial(trial, FakeObjective(cfg, tmp_path, hang_until_stopped(record)))
    reason = "timeout: the trial ran longer than --trial-timeout 0.5 s"
    assert outcome == Outcome(TrialState.FAIL, None, reason)
    assert trial.user_attrs["fail_reason"] == reason
    assert record == {"started": True}  # stopped inside, not run to its end


def test_a_timeout_some_library_swallowed_still_fails_the_trial(tmp_path):
    cfg = RunConfig(trial_timeout=0.5)
    trial = ask(cfg)
    seen = []

    def swallows(t):
        try:
            hang_until_stopped({})(t)
        except TrialTimeout:
            seen.append("timeout")
        return [1.0, 1.0, 1.0]

    outcome = run_trial(trial, FakeObjective(cfg, tmp_path, swallows))
    assert seen == ["timeout"]
    reason = "timeout: the trial ran longer than --trial-timeout 0.5 s"
    assert outcome == Outcome(TrialState.FAIL, None, reason)


def test_a_trial_within_its_timeout_completes_and_nothing_fires_later(tmp_path):
    cfg = RunConfig(trial_timeout=0.3)
    trial = ask(cfg)
    outcome = run_trial(trial, FakeObjective(cfg, tmp_path, lambda t: [0.5, 2.0, 3.0]))
    assert outcome == Outcome(TrialState.COMPLETE, (0.5, 2.0, 3.0))
    # past the limit, this thread runs on undisturbed: the timer was cancelled with the trial
    done = threading.Event()
    threading.Timer(0.6, done.set).start()
    while not done.is_set():
        sum(range(1000))
    assert trial.user_attrs.get("fail_reason") is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_trial_stuck_in_native_code_ends_the_process_and_is_recorded(tmp_path):
    """Past the timeout and its grace the process ends itself (exit 124), the trial marked FAIL."""
    url = sqlite_url(tmp_path)
    script = textwrap.dedent(f"""
        import functools, time
        import optuna
        from search.config.run_config import RunConfig
        from search.study import runner, watchdog
        from search.study.cluster import open_storage
        from tests.support.studies import FakeObjective

        runner.deadline = functools.partial(watchdog.deadline, grace=0.5)
        cfg = RunConfig(trial_timeout=0.5)
        study = optuna.create_study(study_name="hung", storage=open_storage({url!r}),
                                    directions=cfg.directions)
        trial = study.ask()
        runner.run_trial(trial, FakeObjective(cfg, {str(tmp_path)!r}, lambda t: time.sleep(300)))
        print("not reached", flush=True)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=runner.__file__.rsplit("/search/", 1)[0],
        capture_output=True, text=True, timeout=280, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == EXIT_HUNG, proc.stderr[-2000:]
    assert "not reached" not in proc.stdout
    reason = (
        "timeout: the trial ran longer than --trial-timeout 0.5 s "
        "(stuck in native code; the process ended itself)"
    )
    assert f"edgepareto: error: trial 0: {reason}" in proc.stderr
    [trial] = optuna.load_study(study_name="hung", storage=url).get_trials()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == reason


def test_the_trial_runs_in_its_device_slot_and_records_the_wait(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPARETO_LOCK_DIR", str(tmp_path / "locks"))
    device = f"runner-unit-{os.getpid()}-{tmp_path.name}"
    cfg = RunConfig()
    trial = ask(cfg)
    depth = []

    def inside_slot(t):
        from targets.slot import slot_for

        depth.append(slot_for(device)._work_depth)
        return None

    outcome = run_trial(trial, FakeObjective(cfg, tmp_path, inside_slot, plan=FakePlan(device)))
    assert outcome.state == TrialState.COMPLETE
    assert depth == [1]  # held shared (work) while the objective ran
    assert trial.user_attrs["slot_wait_s"] == 0.0  # nothing measured, so nothing waited
    assert (tmp_path / "locks").is_dir()


def test_cpus_per_trial_sets_torchs_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        cfg = RunConfig(cpus_per_trial=1)
        seen = []
        run_trial(ask(cfg), FakeObjective(cfg, tmp_path, lambda t: seen.append(torch.get_num_threads())))
        assert seen == [1]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("exc", "text"), [
    (CandidateError("plain"), "CandidateError: plain"),
    (ValueError("two\nlines\t and   tabs "), "ValueError: two lines and tabs"),
    (RuntimeError(), "RuntimeError: no message"),
    (KeyError("conv1"), "KeyError: 'conv1'"),
    (OSError("x" * 1000), "OSError: " + "x" * 397 + "..."),
])
def test_a_failure_reason_is_one_short_line(exc, text):
    assert reason(exc) == text


def frozen(state: TrialState, **kw) -> optuna.trial.FrozenTrial:
    return create_trial(state=state, **kw)


def test_announce_writes_one_line_per_outcome():
    cfg = RunConfig()
    progress, stream = quiet_progress(cfg)
    progress.trial(1, 4, 7)
    announce(progress, frozen(TrialState.COMPLETE, values=[0.91, 2.0, 0.5],
                              user_attrs={"techniques": "prune(0.4)+int8"}))
    over = frozen(TrialState.COMPLETE, values=[0.99, 0.1, 0.1], user_attrs={"techniques": "int8"},
                  constraints={"max_accuracy_drop": 1.0})
    assert not is_feasible(over)
    announce(progress, over)
    announce(progress, frozen(TrialState.FAIL, user_attrs={"fail_reason": "CandidateError: boom"}))
    announce(progress, frozen(TrialState.FAIL))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("[1/4 ") and "trial 7" in lines[0]
    assert ": prune(0.4)+int8 | best accuracy 0.9100, latency 2.000 ms, size 0.50 MB" in lines[0]
    # an over-budget trial is announced as such and never becomes the best
    assert ": int8 (over budget) | best accuracy 0.9100, latency 2.000 ms, size 0.50 MB" in lines[1]
    assert ": FAIL CandidateError: boom | best" in lines[2]
    assert ": FAIL no reason recorded | best" in lines[3]
