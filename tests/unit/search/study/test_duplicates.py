"""A candidate the sampler proposes again costs no second build: the trial reuses its twin's result,
names it in ``duplicate_of``, and the front counts the twin only."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd

from search.core.layout import METRICS_FILE, PARAMS_FILE, trial_dir
from search.study.objective import same_candidate
from tests.support.cli import TINY, run_cli

#: Two candidates in all: the baseline and dynamic int8 per tensor. Six trials must repeat them.
TWO_CANDIDATES = (
    "name: two\ntechniques:\n  quantize:\n    mode: [dynamic]\n    per_channel: [false]\n    ops: [all]\n"
)


def test_repeated_candidates_reuse_their_twins_result(runs_dir: Path, tmp_path: Path, capfd):
    space = tmp_path / "two.yaml"
    space.write_text(TWO_CANDIDATES)
    code, out, err = run_cli(["search", "--runs-dir", str(runs_dir), "--name", "dup", "--trials", "6",
                              "--space", str(space), *TINY], capfd)
    assert code == 0, err
    run = runs_dir / "dup"
    study = optuna.load_study(study_name="dup", storage=f"sqlite:///{run / 'study.db'}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    firsts = {}
    for t in trials:
        key = json.dumps(t.user_attrs["candidate"], sort_keys=True)
        twin = firsts.setdefault(key, t)
        folder = trial_dir(run, t.number)
        if twin is t:
            assert "duplicate_of" not in t.user_attrs
            assert (folder / METRICS_FILE).is_file()
        else:  # built nothing: no artifact or metrics of its own, the twin's values and constraints
            assert t.user_attrs["duplicate_of"] == twin.number
            assert t.values == twin.values and t.constraints == twin.constraints
            assert t.user_attrs["artifact"] == twin.user_attrs["artifact"]
            assert sorted(p.name for p in folder.iterdir()) == [PARAMS_FILE]
            assert json.loads((folder / PARAMS_FILE).read_text())["duplicate_of"] == twin.number
    assert len(firsts) == 2  # six trials, two candidates built
    table = pd.read_csv(run / "trials.csv")
    assert table["duplicate_of"].notna().sum() == 4
    front = pd.read_csv(run / "pareto.csv")
    assert not front["trial"].isin(table.loc[table["duplicate_of"].notna(), "trial"]).any()


def test_same_candidate_survives_the_storage_round_trip():
    candidate = {"quantize": {"mode": "dynamic", "per_channel": False, "scale": 0.5, "dims": (1, 2)}}
    stored = json.loads(json.dumps(candidate))
    assert same_candidate(candidate, stored)
    assert not same_candidate(candidate, {"quantize": {**stored["quantize"], "scale": 0.51}})
    assert not same_candidate(candidate, {})
