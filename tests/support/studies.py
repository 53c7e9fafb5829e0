"""Tiny studies for the engine's unit tests: an Optuna study on SQLite (as a run's ``study.db``) and a
lightweight objective with exactly what ``search.study.engine._loop`` and ``search.study.runner.run_trial``
use of a real ``Objective`` (``cfg``, ``plan.local_device``, ``run_dir``, ``publish`` and the call), so
the loop runs in milliseconds with no training, export or measurement; and a study whose trials recorded
their stage times (``timed_study``)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from search.config.run_config import RunConfig
from search.core.stages import STAGES, stage_key
from search.study.cluster import open_storage
from search.study.progress import Progress

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class FakePlan:
    """The part of a ``LatencyPlan`` the runner reads: no device slot (nothing measured here)."""

    local_device: str | None = None


@dataclass
class FakeObjective:
    """Define-by-run over ``x`` (float) and ``y`` (int); returns one value per objective of ``cfg``.

    ``behaviour(trial)``, when given, runs after the parameters are suggested and returns the values
    (or raises); ``calls`` and ``published`` record the trial numbers seen."""

    cfg: RunConfig
    run_dir: Path
    behaviour: Callable[[optuna.Trial], list[float] | None] | None = None
    plan: FakePlan = field(default_factory=FakePlan)
    calls: list[int] = field(default_factory=list)
    published: list[int] = field(default_factory=list)

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self.calls.append(trial.number)
        x = trial.suggest_float("x", 0.0, 1.0)
        y = trial.suggest_int("y", 1, 8)
        if self.behaviour is not None:
            values = self.behaviour(trial)
            if values is not None:
                return values
        by_name = {"accuracy": x, "latency": float(y), "size": x * y}
        return [by_name[o] for o in self.cfg.objectives]

    def publish(self, number: int) -> None:
        self.published.append(number)


def quiet_progress(cfg: RunConfig) -> tuple[Progress, io.StringIO]:
    """A progress writer into a string buffer (returned, to read what the engine logged)."""
    stream = io.StringIO()
    return Progress(cfg.objectives, cfg.directions, stream=stream), stream


def sqlite_url(folder: Path, name: str = "study.db") -> str:
    return f"sqlite:///{(Path(folder) / name).resolve()}"


def new_study(
    folder: Path | None, cfg: RunConfig, name: str = "unit", seed: int = 0
) -> optuna.Study:
    """A fresh study with the run's directions and a seeded random sampler: on a SQLite file in
    ``folder`` opened as the engine opens it (heartbeats on), or in memory when ``folder`` is None
    (no heartbeats; ten times faster to make)."""
    storage = open_storage(sqlite_url(folder)) if folder is not None else optuna.storages.InMemoryStorage()
    return optuna.create_study(
        study_name=name, storage=storage, directions=cfg.directions,
        sampler=optuna.samplers.RandomSampler(seed=seed),
    )


def dead_pid() -> int:
    """The id of a process that has just ended (a child that exited and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert proc.wait(timeout=60) == 0
    pid = proc.pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    raise AssertionError(f"pid {pid} was reused at once; run the test again")


def stage_attrs(**seconds: float) -> dict[str, float]:
    """The user attributes of a trial that recorded its stage times: ``seconds`` (stage -> s), the
    other stages 0."""
    return {stage_key(s): float(seconds.get(s, 0.0)) for s in STAGES}


def timed_study() -> optuna.Study:
    """An in-memory study whose trials recorded stage times, but for a failure's, a duplicate's and an
    older version's. Completed with times: 0 (4 s), 1 (16.1 s), 5 (8 s); failed with times: 2 (30 s)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    done, failed = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    rows = [
        (done, [0.90, 2.0], {"baseline": True, **stage_attrs(accuracy=2, latency=1, export=1)}),
        (done, [0.85, 1.0], stage_attrs(train=12, recalibrate=0.1, accuracy=2, export=1, quantize=0.5,
                                        other=0.5)),
        (failed, None, {"fail_reason": "CandidateError: export failed", **stage_attrs(train=30)}),
        (done, [0.85, 1.0], {"duplicate_of": 1}),  # reused trial 1's result: no time of its own
        (done, [0.70, 0.5], {"techniques": "from before stage times"}),
        (done, [0.70, 0.5], stage_attrs(train=6, accuracy=1, latency=1)),
    ]
    for state, values, attrs in rows:
        study.add_trial(optuna.trial.create_trial(state=state, values=values, user_attrs=attrs))
    return study
