"""``--backend ray``: the same search through Ray Tune, with Ray's ``OptunaSearch`` as the searcher.

The Optuna study is the run's own (its storage: SQLite in the run folder or ``--storage``), so
``edgepareto show`` and ``--resume`` work as with the Optuna backend. ``OptunaSearch`` asks the study
for a trial and samples the space define-by-run in the driver; the Ray trial opens the same stored
trial and runs the unchanged objective on it (suggestions return the stored values), so user
attributes, constraints and artifacts are written exactly as in the Optuna backend. The driver tells
the result: COMPLETE with the values, or FAIL with the reason; a Ray trial whose worker died is a FAIL
with that reason.

Ray is optional: ``pip install 'edgepareto[ray]'``; the modules are imported only here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.config.run_config import RunConfig
from search.core.errors import UserError
from search.core.optional import require
from search.core.text import one_line
from search.study.cluster import BASELINE_ATTR, finished_count, open_storage
from search.study.objective import Objective
from search.study.progress import Progress
from search.study.runner import Outcome, announce, run_trial

#: The Ray trial's config key holding the Optuna trial it evaluates.
TRIAL_KEY = "edgepareto_trial_id"
#: The Ray node a trial ran on.
NODE_ATTR = "ray_node"
NO_RESULT = "the Ray trial ended without a result: its worker process died or raised"


def check_ray() -> None:
    """Fail early, with the install command, when Ray Tune is missing."""
    require("ray.tune", "--backend ray")


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (``auto``, ``ray://HOST:10001``, ``HOST:6379``), or start a
    local Ray when None."""
    check_ray()
    import ray

    if ray.is_initialized():
        return
    _reachable(address)
    try:
        ray.init(
            address=address, include_dashboard=False, logging_level=logging.WARNING,
            configure_logging=True, log_to_driver=True,
        )
    except Exception as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise UserError(f"cannot start {where}: {one_line(exc)}") from None


def _reachable(address: str | None, timeout: float = 5.0) -> None:
    """A HOST:PORT address must accept a TCP connection; Ray itself retries for minutes."""
    if not address or address == "auto" or address.startswith("local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise UserError(f"--ray-address {address}: expected auto, ray://HOST:PORT or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def result_of(outcome: Outcome, objectives: tuple[str, ...]) -> dict[str, Any]:
    """What a Ray trial reports: every objective (NaN when failed), the state and the reason."""
    values = outcome.values or (math.nan,) * len(objectives)
    return {
        **dict(zip(objectives, values)), "state": outcome.state.name,
        "fail_reason": outcome.reason or "",
    }


def _trainable(
    config: dict[str, Any], *, objective: Objective, storage_url: str,
) -> None:
    """One Ray trial: the stored Optuna trial, evaluated by the shared runner."""
    import ray
    from ray import tune

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = objective.cfg
    study = optuna.load_study(  # the driver samples; this process only reads and records
        study_name=cfg.name, storage=open_storage(storage_url), sampler=optuna.samplers.RandomSampler(),
    )
    trial = optuna.Trial(study, config[TRIAL_KEY])
    trial.set_user_attr(NODE_ATTR, ray.get_runtime_context().get_node_id())
    try:
        outcome = run_trial(trial, objective)
    except UserError as exc:  # the run cannot go on from here (an unreachable agent): say why
        trial.set_user_attr("fail_reason", str(exc))
        outcome = Outcome(TrialState.FAIL, None, str(exc))
    tune.report(result_of(outcome, cfg.objectives))


def _searcher(cfg: RunConfig, study: optuna.Study, objective: Objective, progress: Progress) -> Any:
    from ray.tune.search.optuna import OptunaSearch

    space = objective.space

    def define_by_run(trial: Any) -> dict[str, Any]:
        """Runs in the driver on the asked trial: samples the candidate's parameters."""
        asked = trial.ot_trial
        space.sample(trial, baseline=bool(asked.user_attrs.get(BASELINE_ATTR)))
        return {TRIAL_KEY: asked._trial_id}

    class Searcher(OptunaSearch):
        """OptunaSearch that tells FAIL with the trial's reason and reports progress. The Optuna
        study is the run's state (``--resume`` goes through it), so Tune's searcher checkpoint is
        an empty file."""

        def save(self, checkpoint_path: str) -> None:
            Path(checkpoint_path).write_bytes(b"")

        def restore(self, checkpoint_path: str) -> None:
            pass

        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            asked = self._ot_trials[trial_id]
            self._completed_trials.add(trial_id)
            done = finished_count(self._ot_study) + 1
            progress.trial(done, cfg.trials, asked.number)
            if not error and result and result.get("state") == TrialState.COMPLETE.name:
                values = [float(result[m]) for m in cfg.objectives]
                announce(progress, self._ot_study.tell(asked, values, skip_if_finished=True))
                return
            if not error and result and result.get("state") == TrialState.PRUNED.name:
                announce(progress, self._ot_study.tell(asked, state=TrialState.PRUNED, skip_if_finished=True))
                return
            if study._storage.get_trial(asked._trial_id).state == TrialState.RUNNING:
                if "fail_reason" not in asked.user_attrs:
                    asked.set_user_attr("fail_reason", (result or {}).get("fail_reason") or NO_RESULT)
                self._ot_study.tell(asked, state=TrialState.FAIL)
            announce(progress, study._storage.get_trial(asked._trial_id))

    return Searcher(
        space=define_by_run, metric=list(cfg.objectives),
        mode=["max" if d == "maximize" else "min" for d in cfg.directions],
        sampler=cfg.make_sampler(), study_name=study.study_name, storage=study._storage,
    )


def run_ray(
    cfg: RunConfig, storage_url: str, study: optuna.Study, objective: Objective, progress: Progress,
) -> None:
    """Run the remaining trials of ``study`` as Ray Tune trials (Tune's files go under the run's
    ``ray/`` folder)."""
    check_ray()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0
    from ray import tune

    remaining = cfg.trials - finished_count(study)
    if remaining <= 0:
        return
    connect(cfg.ray_address)
    cpus = cfg.cpus_per_trial or 1
    quiet = Progress(cfg.objectives, cfg.directions, quiet=True)
    run_dir = objective.run_dir.resolve()
    remote_objective = dataclasses.replace(  # what every Ray trial gets: quiet, its CPUs as threads
        objective, cfg=cfg.replace(cpus_per_trial=cpus), run_dir=run_dir, progress=quiet,
    )
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, objective=remote_objective, storage_url=storage_url),
        {"cpu": cpus, "gpu": cfg.gpus_per_trial},
    )
    progress.log(
        f"ray: {remaining} trial(s), {cpus} CPU(s) each"
        + (f", at most {cfg.max_concurrent} at once" if cfg.max_concurrent else "")
    )
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    # A fresh actor per trial (Tune's default). With reuse_actors=True, Tune hands a pending trial
    # to an actor that just finished and cancels the one still starting on another node: when a
    # worker's start (importing torch, ~10 s on the 2-core VM) outlasts a trial, every trial
    # stays on one node and the others idle. The start costs ~10 s per trial there, small
    # against a fine-tuning trial at real size; a fresh process also frees each trial's memory.
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(cfg, study, objective, progress), num_samples=remaining,
            max_concurrent_trials=cfg.max_concurrent, time_budget_s=cfg.timeout, reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{stamp}", storage_path=str(run_dir / "ray"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()
