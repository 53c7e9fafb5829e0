"""The cluster flags and ``edgepareto worker``'s own checks: one-line errors before anything is trained."""

from __future__ import annotations

import optuna

from tests.support.cli import TINY, run_cli


def test_cluster_flags_are_checked_before_any_training(tmp_path, capfd):
    cases = [
        (["--backend", "dask"], "--backend must be one of optuna, ray"),
        (["--max-concurrent", "2"], "--max-concurrent needs --backend ray"),
        (["--ray-address", "auto"], "--ray-address needs --backend ray"),
        (["--trial-timeout", "0"], "--trial-timeout must be a number of seconds above 0"),
        (["--runs-dir", "file:///tmp/x"], "needs a database server every machine reaches"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(["search", "--runs-dir", str(tmp_path), *TINY, *extra], capfd)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*/trials"))


def test_worker_needs_an_existing_edgepareto_study(tmp_path, capfd):
    storage = f"sqlite:///{tmp_path / 'other.db'}"
    code, _, err = run_cli(["worker", "nope", "--storage", storage], capfd)
    assert code == 2 and "has no study named 'nope'" in err
    optuna.create_study(study_name="plain", storage=storage)
    code, _, err = run_cli(["worker", "plain", "--storage", storage], capfd)
    assert code == 2 and "was not created by edgepareto search" in err
