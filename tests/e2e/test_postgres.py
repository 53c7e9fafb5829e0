"""The PostgreSQL fixture serves Optuna's RDBStorage to several processes at once."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

WORKER = """
import sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="shared", storage=sys.argv[1])
study.optimize(lambda trial: trial.suggest_float("x", -1.0, 1.0) ** 2, n_trials=3)
"""


def test_two_processes_share_a_study(fresh_database: str) -> None:
    optuna.create_study(study_name="shared", storage=fresh_database, direction="minimize")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, fresh_database],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out

    trials = optuna.load_study(study_name="shared", storage=fresh_database).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 6
    assert sorted(t.number for t in trials) == list(range(6))


def test_fresh_databases_are_separate(postgres_url: str, fresh_database: str) -> None:
    assert fresh_database != postgres_url
    optuna.create_study(study_name="only-here", storage=fresh_database)
    assert optuna.get_all_study_names(storage=postgres_url) == []
