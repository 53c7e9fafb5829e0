"""Persistent jobs: one row per submitted search, in any SQLAlchemy database (SQLite by default)."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from search.core.errors import UserError
from search.core.text import one_line

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")

_META = sa.MetaData()
JOBS = sa.Table(
    "edgepareto_jobs", _META,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("config", sa.Text, nullable=False),  # the submitted settings, JSON
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("pid", sa.Integer),  # the worker process (its own process group)
    sa.Column("cancel", sa.Boolean, nullable=False, default=False),
    sa.Column("resume", sa.Boolean, nullable=False, default=False),  # start with --resume
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
)


@dataclass(frozen=True)
class Job:
    """A submitted search, as stored."""

    id: str
    state: str
    config: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    pid: int | None = None
    cancel: bool = False
    resume: bool = False
    attempts: int = 0

    @classmethod
    def from_row(cls, row: Any) -> Job:
        data = dict(row._mapping)
        data["config"] = json.loads(data["config"])
        return cls(**data)


class JobStore:
    """The jobs table. State changes that two parties could race on are conditional updates."""

    def __init__(self, url: str) -> None:
        try:
            self.engine = sa.create_engine(url, future=True)
            _META.create_all(self.engine)
        except Exception as exc:
            reason = one_line(exc, 200)
            raise UserError(f"cannot open the jobs database {url}: {reason}") from None

    def add(self, config: dict[str, Any]) -> Job:
        job = Job(id=secrets.token_hex(6), state="queued", config=config, created_at=time.time())
        with self.engine.begin() as db:
            db.execute(JOBS.insert().values(
                id=job.id, state=job.state, config=json.dumps(config), created_at=job.created_at,
                cancel=False, resume=False, attempts=0,
            ))
        return job

    def get(self, job_id: str) -> Job | None:
        with self.engine.connect() as db:
            row = db.execute(JOBS.select().where(JOBS.c.id == job_id)).first()
        return Job.from_row(row) if row else None

    def all(self, state: str | None = None) -> list[Job]:
        query = JOBS.select().order_by(JOBS.c.created_at, JOBS.c.id)
        if state is not None:
            query = query.where(JOBS.c.state == state)
        with self.engine.connect() as db:
            return [Job.from_row(r) for r in db.execute(query)]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as db:
            rows = db.execute(sa.select(JOBS.c.state, sa.func.count()).group_by(JOBS.c.state)).all()
        return {state: 0 for state in STATES} | {s: int(n) for s, n in rows}

    def update(self, job_id: str, when: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Set ``values``; with ``when``, only if the job is in one of those states. True if it changed."""
        query = JOBS.update().where(JOBS.c.id == job_id)
        if when is not None:
            query = query.where(JOBS.c.state.in_(when))
        with self.engine.begin() as db:
            return db.execute(query.values(**values)).rowcount == 1
