"""``--fidelity structure`` in a whole search: a candidate over the latency budget stops before its
fine-tuning as a PRUNED trial, with its structure's file, latency, size and reason; it never enters
the front, the run's tables and ``show`` count it, and the run resumes past it."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from search.study.constraints import PRUNED_ATTR
from tests.support.cli import TINY, run_cli
from tests.support.runs import slow_space

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_over_budget_candidates_stop_before_fine_tuning(runs_dir, tmp_path, capfd):
    args = ["search", "--runs-dir", str(runs_dir), "--name", "screen", "--trials", "4", "--fidelity",
            "structure", "--max-latency-ms", "0.001", "--space", str(slow_space(tmp_path)), *TINY]
    code, _, err = run_cli(args, capfd)
    assert code == 0, err
    run = runs_dir / "screen"
    study = optuna.load_study(study_name="screen", storage=f"sqlite:///{run / 'study.db'}")
    trials = study.get_trials()
    assert trials[0].state == TrialState.COMPLETE  # the baseline is never screened
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 3  # every candidate fine-tunes (distill: always) and every one is too slow
    for t in pruned:
        assert t.user_attrs[PRUNED_ATTR].startswith("over the latency budget before fine-tuning: ")
        assert t.user_attrs["latency_ms"] > 0.001 and t.user_attrs["size_mb"] > 0
        assert t.constraints["max_latency_ms"] > 0  # the sampler files it as infeasible
        assert (run / t.user_attrs["artifact"]).is_file() and "structure" in t.user_attrs["artifact"]
        folder = run / "trials" / f"{t.number:04d}"
        assert not (folder / "model.onnx").exists()  # no fine-tuning, no final artifact
        assert json.loads((folder / "metrics.json").read_text())["state"] == "PRUNED"
    table = pd.read_csv(run / "trials.csv")
    assert sorted(table["state"]) == ["COMPLETE", "PRUNED", "PRUNED", "PRUNED"]
    assert set(pd.read_csv(run / "pareto.csv")["trial"]) == {0}
    code, out, err = run_cli(["show", "screen", "--runs-dir", str(runs_dir)], capfd)
    assert code == 0 and "3 pruned" in out, err
    code, _, err = run_cli(["search", "--runs-dir", str(runs_dir), "--resume", "screen", "--trials", "5",
                            "--quiet"], capfd)
    assert code == 0, err
    resumed = optuna.load_study(study_name="screen", storage=f"sqlite:///{run / 'study.db'}").get_trials()
    assert len(resumed) == 5 and resumed[4].state == TrialState.PRUNED


def test_an_unknown_fidelity_is_one_line(tmp_path, capfd):
    code, _, err = run_cli(["search", "--runs-dir", str(tmp_path), "--fidelity", "rungs", *TINY], capfd)
    assert code == 2 and "--fidelity must be one of off, structure, got 'rungs'" in err
    assert len(err.strip().splitlines()) == 1
