"""Trial counts add up after a resume, and ``show``, the service and the report give the same numbers."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState, create_trial

from search.front.counts import TrialCounts, TrialRow, count_trials, frame_counts, frozen_row
from search.front.run import load_run
from search.front.trials import trials_frame
from search.outputs.report import header
from search.service.scheduler import describe, read_progress
from search.service.store import Job
from tests.support.cli import run_cli


def test_an_interrupted_trial_is_beside_the_sum_not_in_it():
    rows = [TrialRow("COMPLETE")] * 3 + [
        TrialRow("FAIL", reason="export: opset 18 has no such op"),
        TrialRow("FAIL", interrupted=True, reason="interrupted: its worker stopped mid-trial"),
        TrialRow("PRUNED"), TrialRow("RUNNING"), TrialRow("WAITING"),
    ]
    counts = count_trials(rows, budget=6)
    assert (counts.complete, counts.failed, counts.pruned, counts.running, counts.waiting) == (3, 1, 1, 1, 1)
    assert counts.interrupted == 1 and counts.counted == 5 and counts.left == 1
    assert counts.failed_by_reason == {"export": 1}
    assert counts.describe() == (
        "5/6 counted: 3 complete, 1 failed, 1 pruned; 1 running, 1 waiting; "
        "1 interrupted (run again, not counted)"
    )
    assert counts.to_dict()["left"] == 1 and counts.to_dict()["counted"] == 5


def test_failure_reasons_beyond_the_top_ones_are_summed():
    rows = [TrialRow("FAIL", reason=f"reason {i}: detail") for i in range(13)]
    counts = count_trials(rows, budget=13)
    assert len(counts.failed_by_reason) == 11 and counts.failed_by_reason["other"] == 3
    assert sum(counts.failed_by_reason.values()) == counts.failed == 13


def test_an_old_trials_table_tells_an_interruption_by_its_reason():
    old = pd.DataFrame({"state": ["COMPLETE", "FAIL", "FAIL"],
                        "fail_reason": [None, "interrupted: the run stopped mid-trial", "nan logits"]})
    counts = frame_counts(old, budget=2)
    assert (counts.complete, counts.failed, counts.interrupted, counts.left) == (1, 1, 1, 0)


def test_show_the_service_and_the_report_agree_after_a_resume(finished_run: Path, tmp_path: Path, capfd):
    """A finished six-trial run plus the trial a kill cut short: six of six counted, one interrupted."""
    runs = tmp_path / "runs"
    shutil.copytree(finished_run, runs / "finished")
    run = runs / "finished"
    study = optuna.load_study(study_name="finished", storage=f"sqlite:///{run / 'study.db'}")
    study.add_trial(create_trial(
        state=TrialState.FAIL, params={}, distributions={},
        user_attrs={"interrupted": True, "fail_reason": "interrupted: its worker stopped mid-trial"},
    ))
    trials_frame(study).to_csv(run / "trials.csv", index=False)  # as the resumed run's finalize writes it
    budget = 6
    expected = count_trials([frozen_row(t) for t in study.get_trials()], budget)
    assert expected.counted == budget and expected.interrupted == 1 and expected.left == 0

    service = read_progress(runs, "finished", TrialCounts(budget))
    assert service == expected
    job = Job(id="finished", state="done", config={"trials": budget}, created_at=0.0)
    progress = describe(job, service)["progress"]
    assert progress["trials_finished"] == progress["trials_total"] == budget
    assert progress["interrupted"] == 1

    assert load_run(run).counts() == expected
    assert expected.describe() in header(load_run(run))
    code, out, _ = run_cli(["show", "finished", "--runs-dir", str(runs)], capfd)
    assert code == 0 and f"trials: {expected.describe()}" in out
