"""The Ray backend's searcher tells Optuna how each Tune trial ended: COMPLETE with its values, PRUNED
(stopped before fine-tuning, ``--fidelity structure``) as PRUNED, anything else as FAIL with a reason.
In-process: Tune's searcher object, no cluster."""

from __future__ import annotations

import math
import types

import pytest
from optuna.trial import TrialState

from search.config.run_config import RunConfig
from search.study.ray_backend import _searcher
from spaces import Space
from tests.support.studies import new_study, quiet_progress

pytest.importorskip("ray.tune.search.optuna", reason="Ray is not installed: pip install ray[tune]")
pytestmark = pytest.mark.slow  # importing Ray Tune takes seconds: kept out of the fast part


@pytest.mark.parametrize(("result", "state"), [
    ({"accuracy": 0.9, "latency": 1.0, "size": 2.0, "state": "COMPLETE", "fail_reason": ""},
     TrialState.COMPLETE),
    ({**dict.fromkeys(("accuracy", "latency", "size"), math.nan), "state": "PRUNED",
      "fail_reason": "over the latency budget before fine-tuning"}, TrialState.PRUNED),
    ({**dict.fromkeys(("accuracy", "latency", "size"), math.nan), "state": "FAIL",
      "fail_reason": "NaN weights"}, TrialState.FAIL),
])
def test_the_searcher_tells_the_state_the_trial_ended_in(result, state):
    cfg = RunConfig(trials=2)
    study = new_study(None, cfg)
    objective = types.SimpleNamespace(space=Space.load("default"))
    searcher = _searcher(cfg, study, objective, quiet_progress(cfg)[0])
    assert searcher.suggest("tune-1") is not None
    searcher.on_trial_complete("tune-1", result=result)
    (trial,) = study.get_trials()
    assert trial.state == state
    if state == TrialState.COMPLETE:
        assert trial.values == [0.9, 1.0, 2.0]
    if state == TrialState.FAIL:
        assert trial.user_attrs["fail_reason"] == "NaN weights"
