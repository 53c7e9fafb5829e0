"""An interrupted search (kill -9 or Ctrl-C) resumes without losing or repeating a completed trial."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.config.run_config import RunConfig
from tests.support.cli import ROOT, TINY, run_cli
from tests.support.runs import slow_space

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TRIALS = 6


def start(runs: Path, name: str, space: Path) -> subprocess.Popen:
    args = ["search", "--runs-dir", str(runs), "--name", name, "--trials", str(TRIALS),
            "--space", str(space), *TINY]
    return subprocess.Popen(
        [sys.executable, "-m", "search", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    # A background job of a non-interactive shell (as CI may start us) inherits SIGINT ignored,
    # and Python then never raises KeyboardInterrupt; a user's terminal delivers Ctrl-C normally.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_mid_trial(run: Path, completed: int, proc: subprocess.Popen, limit: float = 240) -> None:
    """Wait until ``completed`` trials have metrics and another one is being built."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        started = {p.parent for p in run.glob("trials/*/params.json")}
        done = {p.parent for p in run.glob("trials/*/metrics.json")}  # read second: no race
        if len(done) >= completed and started - done:
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.1)
    raise AssertionError("the search made no progress")


def load(run: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run / 'study.db'}")


def check_resumed(run: Path, name: str, before: dict[int, tuple]) -> None:
    study = load(run, name)
    trials = study.get_trials(deepcopy=False)
    for number, values in before.items():  # nothing completed was lost or changed
        assert trials[number].state == TrialState.COMPLETE and tuple(trials[number].values) == values
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert interrupted, "the stop landed mid-trial, so one trial must be marked interrupted"
    counted = [t for t in trials if not t.user_attrs.get("interrupted")]
    assert len(counted) == TRIALS  # nothing repeated: exactly the requested number counted
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    for t in trials:
        if t.user_attrs.get("interrupted"):
            retry = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
            assert len(retry) == 1 and retry[0].params == t.params
    assert (run / "pareto.csv").is_file()


def snapshot(run: Path, name: str) -> dict[int, tuple]:
    return {
        t.number: tuple(t.values)
        for t in load(run, name).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }


def test_resume_after_kill_9(runs_dir, tmp_path, capfd):
    runs, name = runs_dir, "killed"
    proc = start(runs, name, slow_space(tmp_path))
    wait_mid_trial(runs / name, 2, proc)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    before = snapshot(runs / name, name)
    assert len(before) >= 2
    code, _, err = run_cli(["search", "--runs-dir", str(runs), "--resume", name], capfd)
    assert code == 0, err
    check_resumed(runs / name, name, before)


def test_resume_after_ctrl_c(runs_dir, tmp_path, capfd):
    runs, name = runs_dir, "interrupted"
    proc = start(runs, name, slow_space(tmp_path))
    wait_mid_trial(runs / name, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in err and "Traceback" not in err
    before = snapshot(runs / name, name)
    code, _, err = run_cli(["search", "--runs-dir", str(runs), "--resume", name], capfd)
    assert code == 0, err
    check_resumed(runs / name, name, before)


@pytest.mark.parametrize("stopped", ["before its study", "before its first trials"])
def test_resume_of_a_run_stopped_at_its_start(runs_dir, capfd, stopped):
    """A kill between writing run.yaml and queuing the first trials (the service's soak hit it: the
    server killed while a search started) leaves a run folder whose study is missing or empty; resume
    makes and seeds it, and runs the whole search."""
    name = "early"
    code, _, err = run_cli(["search", "--runs-dir", str(runs_dir), "--name", name, "--trials", "2",
                            "--space", "quant-only", "--warm-start", "off", *TINY], capfd)
    assert code == 0, err
    run = runs_dir / name  # back to what the kill left: the settings written, nothing else
    for path in run.iterdir():
        if path.name not in ("run.yaml", "space.yaml"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if stopped == "before its first trials":
        cfg = RunConfig.from_dict(yaml.safe_load((run / "run.yaml").read_text()))
        optuna.create_study(study_name=name, storage=f"sqlite:///{run / 'study.db'}",
                            directions=cfg.directions)
    code, _, err = run_cli(["search", "--runs-dir", str(runs_dir), "--resume", name], capfd)
    assert code == 0, err
    trials = load(run, name).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 and trials[0].user_attrs["baseline"]
    assert (run / "pareto.csv").is_file()
