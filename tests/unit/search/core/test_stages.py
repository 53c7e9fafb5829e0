"""Stage times: the clock's arithmetic, and a real search's trials whose stages add up to their
duration."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from search.core.layout import METRICS_FILE, trial_dir
from search.core.stages import STAGE_KEYS, STAGES, StageClock


def test_the_clock_charges_each_interval_to_the_stage_then_running():
    ticks = iter([0.0, 1.0, 3.5, 4.0, 10.0])
    clock = StageClock(clock=lambda: next(ticks))  # starts at 0
    clock.enter("train")  # 0..1 other
    clock.enter("export")  # 1..3.5 train
    clock.enter("train")  # 3.5..4 export
    totals = clock.totals()  # 4..10 train
    assert totals == {**dict.fromkeys(STAGE_KEYS, 0.0), "other_s": 1.0, "train_s": 8.5, "export_s": 0.5}
    with pytest.raises(ValueError, match="unknown stage 'fine-tune'"):
        clock.enter("fine-tune")


def test_a_searchs_stage_times_add_up_to_each_trials_duration(finished_run):
    trials = pd.read_csv(finished_run / "trials.csv")
    built = trials[(trials.state == "COMPLETE") & trials.duplicate_of.isna()]
    assert len(built) >= 2
    for row in built.itertuples():
        stages = [getattr(row, key) for key in STAGE_KEYS]
        assert all(s >= 0 for s in stages)
        # Within 10%; a trial of a second also pays a fixed ~0.2 s after its clock stops (writing the
        # stage attributes and tell: about ten SQLite commits), which 10% of a real trial absorbs.
        assert abs(sum(stages) - row.duration_s) <= max(0.10 * row.duration_s, 0.3), row.trial
        recorded = json.loads((trial_dir(finished_run, row.trial) / METRICS_FILE).read_text())["stages"]
        assert set(recorded) == set(STAGE_KEYS)
    assert built.accuracy_s.gt(0).all() and built.latency_s.gt(0).all() and built.export_s.gt(0).all()
    quantized = built[built.techniques.str.contains("quantize")]
    assert quantized.quantize_s.gt(0).all() and not quantized.empty
    assert STAGES[0] == "train"
