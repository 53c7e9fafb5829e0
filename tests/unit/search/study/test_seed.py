"""A new study's queue: the baselines first, then the warm-start recipes, never more than the trial
budget holds (a recipe left waiting would be a trial nobody runs)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search.config.run_config import RunConfig
from search.study.engine import _seed
from spaces.space import JointSpace, Space


def queued(trials: int, warm_start: bool = True) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    space = JointSpace((("resnet18", Space.load("default")),))
    _seed(study, RunConfig(trials=trials, warm_start=warm_start), space)
    return study.get_trials(states=(TrialState.WAITING,))


def test_recipes_fill_the_budget_after_the_baseline():
    recipes = len(JointSpace((("resnet18", Space.load("default")),)).recipes())
    assert recipes >= 4
    assert len(queued(3)) == 3 and queued(3)[0].user_attrs["baseline"]
    assert len(queued(60)) == 1 + recipes  # every recipe when there is room
    assert len(queued(1)) == 1  # the baseline alone
    assert len(queued(60, warm_start=False)) == 1
