"""Where a trial's time goes: the stage columns of ``trials.csv``, the stages' shares and the line
``edgepareto show`` prints, on real in-memory Optuna studies."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState, create_trial

from search.core.stages import STAGE_KEYS, STAGES
from search.front.run import time_per_stage
from search.front.trials import stage_seconds, stage_shares, trials_frame
from tests.support.studies import timed_study

#: ``timed_study``'s completed, non-duplicate trials: 4 + 16.1 + 8 s.
LINE = ("time per stage: train 64%, accuracy 18%, export 7%, latency 7%, quantize 2%, other 2% "
        "(median trial 8.0 s)")


def roundtrip(frame: pd.DataFrame, tmp_path) -> pd.DataFrame:
    """``frame`` as trials.csv holds it and the report and ``show`` read it back."""
    frame.to_csv(tmp_path / "trials.csv", index=False)
    return pd.read_csv(tmp_path / "trials.csv")


def test_trials_csv_has_a_column_per_stage_after_duration(tmp_path):
    frame = trials_frame(timed_study())
    columns = list(frame.columns)
    after = columns.index("duration_s") + 1
    assert columns[after:after + len(STAGE_KEYS)] == list(STAGE_KEYS)
    assert frame.loc[1, "train_s"] == 12.0 and frame.loc[2, "train_s"] == 30.0
    assert frame.loc[[3, 4], list(STAGE_KEYS)].isna().all().all()  # a duplicate and an older trial: blank
    back = roundtrip(frame, tmp_path)
    assert list(back.columns) == columns
    assert back.loc[[3, 4], list(STAGE_KEYS)].isna().all().all() and back.loc[0, "accuracy_s"] == 2.0


def test_an_older_study_has_the_stage_columns_blank():
    study = optuna.create_study()
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs={"accuracy": 0.9}))
    frame = trials_frame(study)
    assert set(STAGE_KEYS) <= set(frame.columns) and frame[list(STAGE_KEYS)].isna().all().all()
    assert stage_seconds(frame).empty and time_per_stage(frame) is None


def test_stage_seconds_keeps_the_trials_that_recorded_them(tmp_path):
    seconds = stage_seconds(roundtrip(trials_frame(timed_study()), tmp_path))
    assert list(seconds.columns) == list(STAGES) and list(seconds.index) == [0, 1, 2, 5]
    assert seconds.sum(axis=1).tolist() == pytest.approx([4.0, 16.1, 30.0, 8.0])
    partial = pd.DataFrame({"trial": [7], "train_s": [3.0]})  # only some stages recorded: the rest 0
    assert stage_seconds(partial).loc[7].to_dict() == {s: 3.0 if s == "train" else 0.0 for s in STAGES}
    assert stage_seconds(pd.DataFrame({"trial": [0, 1], "state": ["COMPLETE", "FAIL"]})).empty


@pytest.mark.parametrize(("seconds", "shares"), [
    ({"train": 3.0, "other": 1.0}, {"train": 0.75, "other": 0.25}),
    ({"latency": 2.0}, {"latency": 1.0}),
    ({s: 1.0 for s in STAGES}, {s: 1 / len(STAGES) for s in STAGES}),
    ({}, {}),
    ({"train": 0.0, "export": 0.0}, {}),  # nothing timed: no shares
])
def test_stage_shares(seconds, shares):
    got = stage_shares(seconds)
    if shares:
        assert list(got) == list(STAGES) and math.isclose(sum(got.values()), 1.0)
    assert got == pytest.approx({s: shares.get(s, 0.0) for s in STAGES} if shares else {})


@pytest.mark.parametrize(("seconds", "message"), [
    ({"training": 1.0}, "unknown stage training"),
    ({"train": -1.0}, "train=-1.0"),
    ({"train": float("nan"), "other": 1.0}, "train=nan"),
])
def test_stage_shares_rejects_bad_input(seconds, message):
    with pytest.raises(ValueError, match=message):
        stage_shares(seconds)


def test_time_per_stage_over_completed_original_trials(tmp_path):
    """Trial 2 failed (its 30 s of training left out), 3 is a duplicate, 4 older; recalibrate's 0.4 %
    rounds to 0 % and is left out; equal shares keep the stages' order."""
    trials = roundtrip(trials_frame(timed_study()), tmp_path)
    assert time_per_stage(trials) == LINE
    assert time_per_stage(trials[trials["trial"].isin([2, 3, 4])]) is None
    assert time_per_stage(trials.drop(columns=["duplicate_of"])) == LINE  # a table from before duplicates
