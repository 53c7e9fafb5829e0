"""``edgepareto bench families``: the row of one finished run, from plain tables."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from search.bench.families import (
    FamilyRow,
    best_within,
    format_families,
    median_trial_s,
    over_budget,
)
from search.front.counts import frame_counts


def pareto() -> pd.DataFrame:
    return pd.DataFrame({
        "techniques": ["baseline", "prune A", "int8", "prune B"],
        "accuracy_drop_pt": [0.0, 0.8, -0.2, 3.0],
        "speedup": [1.0, 2.5, 1.4, 6.0],
        "compression": [1.0, 2.0, 3.9, 8.0],
    })


def test_best_within_one_point_ignores_models_further_below_the_baseline():
    assert best_within(pareto(), "speedup") == (2.5, "prune A")  # 6x is 3 points down
    assert best_within(pareto(), "compression") == (3.9, "int8")
    assert best_within(pareto(), "speedup", points=5) == (6.0, "prune B")


def test_failures_by_reason_over_budget_and_median_trial_time():
    trials = pd.DataFrame({
        "trial": [0, 1, 2, 3, 4, 5],
        "state": ["COMPLETE", "COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"],
        "fail_reason": ["", "", "CandidateError: NaN weights", "timeout: 600 s", "", ""],
        "feasible": [True, False, None, None, True, True],
        "duplicate_of": [None, None, None, None, None, 1],
        "train_s": [100.0, 10.0, 20.0, 30.0, 40.0, 0.1],
        "other_s": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    })
    # the row's failures and trial count are search.front.counts' (edgepareto show's)
    assert frame_counts(trials, 6).failed_by_reason == {"CandidateError": 1, "timeout": 1}
    assert over_budget(trials) == 1
    assert median_trial_s(trials) == 41.0  # completed, the duplicate left out: 101, 11, 41 s
    assert math.isnan(median_trial_s(trials.iloc[2:4]))  # none completed
    waiting = pd.concat([trials, pd.DataFrame({"trial": [6], "state": ["WAITING"]})])
    assert frame_counts(waiting, 7).counted == 6  # an enqueued recipe that never ran is not a trial done


def test_the_table_has_one_line_per_model():
    row = FamilyRow("efficientnet_b0", "efficientnet", 64, 0.975, 2.5, "prune A", 3.9, "int8", 25.0, 20,
                    {"timeout": 1}, 2, {"30%": 0.95, "50%": 0.8})
    text = format_families([row, row])
    assert len(text.splitlines()) == 3 and "2.50x" in text and "95.0%/80.0%" in text and "1 timeout" in text
    named = dataclasses.replace(row, recalibrated_with="taylor")
    unmeasured = dataclasses.replace(row, recalibrated={})
    lines = format_families([named, unmeasured]).splitlines()
    assert lines[1].rstrip().endswith("95.0%/80.0% (taylor)") and lines[2].rstrip().endswith("-")
