"""Every registered sampler (``--sampler``): an Optuna sampler, reproducible under its seed, able to
drive a conditional three-objective study to the end, and accepted by ``RunConfig`` by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.config.run_config import RunConfig
from search.core.errors import UserError
from search.study.samplers import SAMPLERS, create_sampler

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 10
DIRECTIONS = ["maximize", "minimize", "minimize"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def problem(trial: optuna.Trial) -> list[float]:
    """Define-by-run like a compression space: a technique, then only that technique's parameters."""
    technique = trial.suggest_categorical("technique", ["prune", "quantize", "none"])
    width = trial.suggest_float("width", 0.25, 1.0)
    accuracy, latency, size = 0.5 + 0.4 * width, 1.0 + 4.0 * width, 2.0 * width
    if technique == "prune":
        ratio = trial.suggest_float("prune.ratio", 0.1, 0.9)
        accuracy, latency, size = accuracy - 0.2 * ratio ** 2, latency * (1 - ratio), size * (1 - ratio)
    elif technique == "quantize":
        bits = trial.suggest_int("quantize.bits", 4, 8)
        accuracy, size = accuracy - 0.01 * (8 - bits), size * bits / 32
    return [accuracy, latency, size]


def drive(sampler: optuna.samplers.BaseSampler, trials: int = TRIALS) -> optuna.Study:
    """Ask/tell, as the engine drives a study."""
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    for _ in range(trials):
        trial = study.ask()
        study.tell(trial, problem(trial))
    return study


def proposals(study: optuna.Study) -> list[dict]:
    return [t.params for t in study.get_trials()]


@pytest.fixture(params=SAMPLERS.names())
def name(request) -> str:
    return request.param


def test_the_default_sampler_is_registered():
    assert RunConfig().sampler == "tpe"
    assert "tpe" in SAMPLERS.names()


def test_it_builds_an_optuna_sampler(name):
    sampler = create_sampler(name, 0, TRIALS)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    assert create_sampler(name, 0, TRIALS) is not sampler  # a fresh one every time
    assert type(SAMPLERS.get(name)(0, TRIALS)) is type(sampler)


def test_it_is_reproducible_under_its_seed(name):
    first = proposals(drive(create_sampler(name, 7, TRIALS)))
    again = proposals(drive(create_sampler(name, 7, TRIALS)))
    assert first == again
    other = proposals(drive(create_sampler(name, 8, TRIALS), trials=1))
    assert other[0] != first[0]


def test_it_drives_a_three_objective_study_to_the_end(name):
    study = drive(create_sampler(name, 0, TRIALS))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * TRIALS
    for t in trials:
        assert len(t.values) == 3
        assert 0.25 <= t.params["width"] <= 1.0
        extra = set(t.params) - {"technique", "width"}
        own = {"prune": {"prune.ratio"}, "quantize": {"quantize.bits"}, "none": set()}
        assert extra == own[t.params["technique"]]
    assert 1 <= len(study.best_trials) <= TRIALS


def test_run_config_builds_it_with_the_runs_seed(name):
    cfg = RunConfig(sampler=name, seed=3, trials=TRIALS)
    assert cfg.sampler == name
    assert type(cfg.make_sampler()) is type(create_sampler(name, 3, TRIALS))
    expected = proposals(drive(create_sampler(name, 3, TRIALS), trials=3))
    assert proposals(drive(cfg.make_sampler(), trials=3)) == expected
    own_seed = cfg.replace(sampler_seed=11)
    assert own_seed.effective_sampler_seed == 11
    assert proposals(drive(own_seed.make_sampler(), trials=3)) == proposals(
        drive(create_sampler(name, 11, TRIALS), trials=3))
    assert RunConfig.from_dict({"sampler": name}).sampler == name


def test_an_unknown_sampler_is_a_user_error_naming_the_known_ones():
    with pytest.raises(UserError) as err:
        RunConfig(sampler="annealing")
    assert str(err.value) == f"unknown sampler 'annealing'; choose from {', '.join(SAMPLERS.names())}"
    for known in SAMPLERS.names():
        assert known in str(err.value)
    with pytest.raises(UserError) as err:
        create_sampler("tpee", 0, TRIALS)
    assert str(err.value).startswith("unknown sampler 'tpee'; did you mean tpe?")
    assert str(err.value).endswith(f"(known: {', '.join(SAMPLERS.names())})")


def test_validating_a_config_does_not_import_optuna():
    script = (
        "import sys\n"
        "from search.config.run_config import RunConfig\n"
        "from search.study.samplers import SAMPLERS\n"
        "print([RunConfig(sampler=n).sampler for n in SAMPLERS.names()], 'optuna' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"{SAMPLERS.names()} False"
