"""The service only reads a run's study: its progress and live trials never write Optuna's version rows
into a study its worker is creating. (Both writing them at once failed the worker's own opening on a
UNIQUE constraint, and the search with it: the soak found it.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.storages._rdb import models

from search.service.routes import live_trials
from search.service.scheduler import read_progress, study_url
from search.study.cluster import open_storage


def half_made(db: Path) -> None:
    """A study database as its worker leaves it for a moment: the tables made, no rows in them yet."""
    engine = sa.create_engine(f"sqlite:///{db}")
    models.BaseModel.metadata.create_all(engine)
    engine.dispose()


def rows(db: Path, table: str) -> int:
    """Rows in ``table`` (0 when there is no such table)."""
    with sqlite3.connect(db) as con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            return 0
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_progress_and_trials_reads_write_nothing_into_a_study_being_made(tmp_path):
    db = tmp_path / "job1" / "study.db"
    db.parent.mkdir()
    half_made(db)
    assert read_progress(tmp_path, "job1", None).budget == 0  # not readable yet: nothing known
    assert live_trials(db.parent, "job1").empty
    assert rows(db, "version_info") == 0 and rows(db, "alembic_version") == 0
    # the worker then opens it as if alone, and the reads see its trials
    study = optuna.create_study(study_name="job1", storage=open_storage(f"sqlite:///{db}"))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(live_trials(db.parent, "job1")) == 2
    assert read_progress(tmp_path, "job1", None).complete == 2


def test_the_read_only_url_takes_any_folder_name(tmp_path):
    db = tmp_path / "a folder?with #odd% names" / "study.db"
    db.parent.mkdir()
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    storage = optuna.storages.RDBStorage(study_url(db), skip_table_creation=True)
    try:
        assert len(storage.get_all_trials(storage.get_study_id_from_name("s"))) == 1
    finally:
        storage.engine.dispose()
