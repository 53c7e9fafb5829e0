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
from search.study.halving import judge
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


@pytest.mark.timeout(600)
def test_halving_fine_tunes_in_rungs_and_keeps_the_ranked_out_at_their_rung(runs_dir, tmp_path, capfd):
    """test_resnet trained 3 epochs, the space's epochs fixed at 3: every candidate's budget is 3
    epochs in rungs of 1 and 3. Each candidate is scored at rung 1 and goes on exactly when the rule
    (``halving.judge`` against the ones that reached the rung before it) says so; one ranked out ends
    there as a 1-epoch model (its rung's file, scored like any result); the rest train all 3 epochs.
    Ranked on accuracy alone, so that the trade-offs of latency and size cannot keep everyone on."""
    args = ["search", "--runs-dir", str(runs_dir), "--name", "halving", "--trials", "8", "--fidelity",
            "halving", "--warm-start", "off", "--objectives", "accuracy",
            "--space", str(slow_space(tmp_path)), *TINY, "--epochs", "3"]
    code, _, err = run_cli(args, capfd)
    assert code == 0, err
    run = runs_dir / "halving"
    trials = optuna.load_study(study_name="halving", storage=f"sqlite:///{run / 'study.db'}").get_trials()
    assert trials[0].state == TrialState.COMPLETE and "rung:1" not in trials[0].user_attrs  # the baseline
    at_rung = [t for t in trials[1:] if "rung:1" in t.user_attrs]  # one at a time: in arrival order
    assert len(at_rung) >= 3
    for i, t in enumerate(at_rung):
        peers = [[p.user_attrs["rung:1"]["accuracy"]] for p in at_rung[:i]]
        verdict = judge([t.user_attrs["rung:1"]["accuracy"]], peers, ["maximize"])
        if verdict.promoted:
            assert t.state == TrialState.COMPLETE and t.user_attrs["recovery_epochs"] == 3
            assert t.user_attrs["candidate"]["distill"]["epochs"] == 3
            assert (run / "trials" / f"{t.number:04d}" / "model.onnx").is_file()
        else:
            assert t.state == TrialState.COMPLETE and t.user_attrs["recovery_epochs"] == 1
            assert t.user_attrs["rung_stop"].startswith("kept at 1 of 3 fine-tuning epochs: rank ")
            assert t.user_attrs["candidate"]["distill"]["epochs"] == 1
            assert t.user_attrs["artifact"].endswith("rung-1/model.onnx")
            assert (run / t.user_attrs["artifact"]).is_file()
            assert t.user_attrs["accuracy"] == t.user_attrs["rung:1"]["accuracy"]  # the same file scored
    stopped = {t.number for t in at_rung if t.user_attrs.get("rung_stop")}
    assert stopped, "no candidate was ranked out: the test shows nothing"
    table = pd.read_csv(run / "trials.csv").set_index("trial")
    assert (table.loc[sorted(stopped), "recovery_epochs"] == 1).all()


def test_an_unknown_fidelity_is_one_line(tmp_path, capfd):
    code, _, err = run_cli(["search", "--runs-dir", str(tmp_path), "--fidelity", "rungs", *TINY], capfd)
    assert code == 2 and "--fidelity must be one of off, structure, halving, got 'rungs'" in err
    assert len(err.strip().splitlines()) == 1
