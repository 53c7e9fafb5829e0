"""Shared fixtures: a tiny timm model, the embedded digits data at a small size, the tiny baseline
trained once per session and fresh runs dirs seeded with it, a finished search, PostgreSQL.

Helpers that are not fixtures live in ``tests/support``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch

from search.cli.main import main
from search.task.data import load_dataset
from spaces import Context
from spaces.data import TensorSplit
from tests.support import postgres
from tests.support.cli import TINY
from tests.support.runs import Baselines, seed

# One torch (OpenMP) thread per test process, and per process the tests start (they inherit this
# environment): on 2 cores shared with other processes, OpenMP's spinning threads make torch up to ten
# times slower (a low-rank SVD: 6 s on 2 threads, 0.06 s on 1). OMP_NUM_THREADS=2 pytest ... overrides.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def digits16():
    return load_dataset("digits", 16, (0.5,) * 3, (0.5,) * 3, 0, 0.2, 0.2)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


@pytest.fixture
def ctx(digits16, tiny_model):
    return Context(train=TensorSplit(digits16.train.x[:256], digits16.train.y[:256]), teacher=tiny_model)


# ---------------------------------------------------------------- trained baselines and runs dirs


@pytest.fixture(scope="session")
def baselines(tmp_path_factory) -> Baselines:
    """Baselines trained once per session (by setting), to seed the runs dirs of searches."""
    return Baselines(tmp_path_factory.mktemp("baselines"))


@pytest.fixture(scope="session")
def tiny_baseline(baselines) -> Path:
    """The cache folder (``.cache/baselines/<key>``) of the ``TINY`` model's trained baseline:
    ``--model test_resnet --img-size 16 --epochs 2``, trained once per session."""
    (folder,) = baselines.folders()
    return folder


@pytest.fixture
def runs_dir(tmp_path, tiny_baseline) -> Path:
    """A fresh runs dir of this test's own (``tmp_path/runs``) that already holds the tiny baseline,
    so a ``TINY`` search in it does not train it again."""
    return seed(tmp_path / "runs", tiny_baseline)


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory, tiny_baseline) -> Path:
    """The runs root of the session's shared finished search (seeded with the tiny baseline)."""
    return seed(tmp_path_factory.mktemp("runs"), tiny_baseline)


@pytest.fixture(scope="session")
def finished_run(shared_runs) -> Path:
    """A small finished search, shared read-only by the results tests (report, select, export,
    dashboard); tests that change files copy it first. Six trials of the tiny model, quantisation only
    (no fine-tuning: seconds, where the default space's recipes take minutes on 2 shared cores); the
    quantised models are smaller than the baseline, so the front always holds more than the baseline.
    Searches in the other spaces are tests/e2e's."""
    run = shared_runs / "finished"
    if not run.exists():
        code = main(["search", "--runs-dir", str(shared_runs), "--name", "finished", "--trials", "6",
                     "--space", "quant-only", *TINY])
        assert code == 0 and (run / "pareto.csv").is_file()
    return run


@pytest.fixture(scope="session")
def report_run(finished_run, tmp_path_factory) -> Path:
    """A copy of the shared finished run with its report written (read-only for the report tests)."""
    from search import load_run
    from search.outputs.report import write_report

    run = tmp_path_factory.mktemp("report") / finished_run.name
    shutil.copytree(finished_run, run)
    assert write_report(load_run(run)) == run / "report.html"
    return run


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server for the session (skips when PostgreSQL is not installed):
    ``postgresql+psycopg2://edgepareto@127.0.0.1:PORT/edgepareto``."""
    with postgres.server() as url:
        yield url


@pytest.fixture
def fresh_database(postgres_url: str) -> str:
    """A new, empty database on the session's server, so that tests don't share Optuna studies."""
    return postgres.new_database(postgres_url)
