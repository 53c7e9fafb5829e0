"""The search engine: an Optuna study driven through ask/tell, with resume and failure handling.

Trial states map explicitly: the objective returns -> COMPLETE; it raises -> FAIL with the reason
in the trial's ``fail_reason``; the process dies mid-trial -> the trial stays RUNNING in storage, and
``resume`` marks it FAIL (``interrupted``) and enqueues the same parameters again.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState
from torch import nn

from search import models
from search.atomic import write_json, write_text
from search.config import RunConfig
from search.errors import UserError
from search.interrupt import Interrupts
from search.objective import BASELINE_ATTR, Objective, is_feasible, trial_dir
from search.progress import Progress
from search.results import Report, finalize
from search.task import Task, prepare_all
from spaces import Space
from spaces.space import AUTO, JointSpace, resolve
from targets.latency import LatencyPlan, plan_latency

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


def _seed(cfg: RunConfig) -> int:
    return cfg.seed if cfg.sampler_seed is None else cfg.sampler_seed


SAMPLERS: dict[str, Callable[[RunConfig], optuna.samplers.BaseSampler]] = {
    # multivariate TPE with grouping models the conditional (define-by-run) space jointly
    "tpe": lambda cfg: optuna.samplers.TPESampler(
        seed=_seed(cfg), multivariate=True, group=True,
        n_startup_trials=max(4, min(10, cfg.trials // 4)),
    ),
    "random": lambda cfg: optuna.samplers.RandomSampler(seed=_seed(cfg)),
    "nsga2": lambda cfg: optuna.samplers.NSGAIISampler(seed=_seed(cfg), population_size=8),
}


@dataclass(frozen=True)
class Run:
    """Where a run lives."""

    name: str
    root: Path

    @property
    def dir(self) -> Path:
        return self.root / self.name

    def storage_url(self, cfg: RunConfig) -> str:
        return cfg.storage or f"sqlite:///{(self.dir / 'study.db').resolve()}"


def run_search(cfg: RunConfig, progress: Progress | None = None) -> Report:
    """Start a new run. Validates every input before anything is written."""
    progress = progress or Progress(cfg.objectives, cfg.directions)
    name = cfg.name or dt.datetime.now().strftime("search-%Y%m%d-%H%M%S")
    cfg = cfg.replace(name=name)
    run = Run(name, Path(cfg.runs_dir))
    _check_runs_root(run.root)
    if run.dir.exists():
        raise UserError(
            f"run {name!r} already exists in {run.root}; continue it with --resume {name} "
            "or choose another --name"
        )
    if cfg.space != AUTO:
        Space.load(cfg.space)  # a bad space fails before any training
    plan = _plan(cfg, run.root)
    storage = open_storage(cfg.storage) if cfg.storage else None
    if storage is not None and name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        raise UserError(f"storage {cfg.storage} already has a study named {name!r}; use --resume")
    # resolve and check each model's space on an untrained instance, before any training
    untrained = {m: models.create(m, 2, cfg.img_size, cfg.patch_size) for m in cfg.models}
    models.check_patch_size(cfg.patch_size, untrained)
    space = space_for(cfg.space, untrained)
    tasks = prepare_all(cfg, run.root, progress.log, progress.warn)
    run.dir.mkdir(parents=True)
    write_text(run.dir / "run.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_text(run.dir / "space.yaml", yaml.safe_dump(space.to_mapping(), sort_keys=False))
    study = optuna.create_study(
        study_name=name, storage=storage or run.storage_url(cfg), directions=cfg.directions,
        sampler=SAMPLERS[cfg.sampler](cfg),
    )
    study.set_metric_names(list(cfg.objectives))
    for model in space.models:
        study.enqueue_trial(space.baseline_params(model), user_attrs={BASELINE_ATTR: True})
    if cfg.warm_start:
        for params in space.recipes():
            study.enqueue_trial(params, user_attrs={"recipe": True})
    progress.log(f"run {name}: {run.dir}")
    progress.log("space " + space.describe())
    progress.log(plan.describe())
    return _execute(cfg, run, study, tasks, space, plan, progress)


def space_for(spec: str, base_models: Mapping[str, nn.Module]) -> JointSpace:
    """Each base model's space (``auto``: by architecture), checked against the model."""
    spaces = []
    for name, model in base_models.items():
        space = Space.load(resolve(spec, model))
        space.check(model, name)
        spaces.append((name, space))
    return JointSpace(tuple(spaces))


def load_space(run: Run, cfg: RunConfig) -> JointSpace:
    """The resolved space saved beside a run (``space.yaml``)."""
    data = yaml.safe_load((run.dir / "space.yaml").read_text())
    if isinstance(data, Mapping) and "models" in data:
        return JointSpace.from_mapping(data, where=run.name)
    return JointSpace(((cfg.models[0], Space.from_mapping(data, where=run.name)),))


def resume_search(
    name: str, runs_dir: str = "runs", trials: int | None = None, timeout: float | None = None,
    progress: Progress | None = None, quiet: bool = False,
) -> Report:
    """Continue an interrupted (or finished) run; ``trials``/``timeout`` may be raised."""
    run = Run(name, Path(runs_dir))
    cfg = load_config(run)
    changes = {k: v for k, v in (("trials", trials), ("timeout", timeout)) if v is not None}
    cfg = cfg.replace(**changes)
    _check_runs_root(run.root)
    progress = progress or Progress(cfg.objectives, cfg.directions, quiet=quiet)
    space = load_space(run, cfg)
    plan = _plan(cfg, run.root)
    tasks = prepare_all(cfg, run.root, progress.log, progress.warn)
    try:
        study = optuna.load_study(
            study_name=name, storage=open_storage(run.storage_url(cfg)),
            sampler=SAMPLERS[cfg.sampler](cfg),
        )
    except KeyError:
        raise UserError(f"the storage of run {name!r} has no study of that name") from None
    recovered = recover_interrupted(study)
    if recovered:
        progress.log(f"resume: re-queued interrupted trial(s) {', '.join(map(str, recovered))}")
    progress.log(f"resume {name}: {finished_count(study)} of {cfg.trials} trials done")
    return _execute(cfg, run, study, tasks, space, plan, progress)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage (SQLite, PostgreSQL, MySQL, ...); a bad URL is a ``UserError``."""
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:
        raise UserError(f"cannot open storage {url}: {_reason(exc)}") from None


def load_config(run: Run) -> RunConfig:
    path = run.dir / "run.yaml"
    if not path.is_file():
        raise UserError(f"no run {run.name!r} in {run.root} (missing {path})")
    return RunConfig.from_dict(yaml.safe_load(path.read_text()))


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: finished, and not cut short by an interruption."""
    return sum(
        1 for t in study.get_trials(deepcopy=False, states=FINISHED)
        if not t.user_attrs.get("interrupted")
    )


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Mark trials left RUNNING by a killed process as FAIL and enqueue their parameters again."""
    storage = study._storage  # Optuna exposes no public handle; RetryFailedTrialCallback does this
    study_id = storage.get_study_id_from_name(study.study_name)
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_user_attr(trial_id, "fail_reason", "interrupted: the run stopped mid-trial")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        attrs = {"retry_of": t.number}
        if t.user_attrs.get(BASELINE_ATTR):
            attrs[BASELINE_ATTR] = True
        study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)
        numbers.append(t.number)
    return numbers


def _execute(
    cfg: RunConfig, run: Run, study: optuna.Study, tasks: Mapping[str, Task], space: JointSpace,
    plan: LatencyPlan, progress: Progress,
) -> Report:
    objective = Objective(cfg, tasks, space, plan, run.dir, progress)
    with Interrupts() as interrupts:
        _loop(cfg, run, study, objective, progress, interrupts)
    return finalize(study, cfg, tasks, plan, run.dir, progress)


def _loop(
    cfg: RunConfig, run: Run, study: optuna.Study, objective: Objective, progress: Progress,
    interrupts: Interrupts,
) -> None:
    """Ask, evaluate, tell until ``cfg.trials`` count. A trial cut short by Ctrl-C is never told:
    it stays RUNNING, and ``resume`` re-queues it."""
    start = time.monotonic()
    while (done := finished_count(study)) < cfg.trials:
        if cfg.timeout is not None and time.monotonic() - start >= cfg.timeout:
            progress.log(f"timeout of {cfg.timeout:g} s reached after {done} trials")
            break
        trial = study.ask()
        progress.trial(done + 1, cfg.trials, trial.number)
        try:
            values = objective(trial)
        except UserError:  # the run itself cannot go on (the device's agent went away): stop, resumable
            raise
        except Exception as exc:  # any failure of a candidate is a FAIL trial, never a crash
            interrupts.check()  # ...unless it was Ctrl-C that some library turned into an error
            reason = _reason(exc)
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TrialState.FAIL)
            out = trial_dir(run.dir, trial.number)
            if out.is_dir():
                write_json(out / "metrics.json", {"state": "FAIL", "fail_reason": reason})
            progress.done(f"FAIL {reason}", None)
            if trial.user_attrs.get(BASELINE_ATTR):
                raise UserError(f"the uncompressed baseline failed, nothing to compare: {reason}") from None
            continue
        interrupts.check()  # a swallowed Ctrl-C may have cut the evaluation short
        frozen = study.tell(trial, values)
        feasible = is_feasible(frozen)
        progress.done(
            f"{frozen.user_attrs['techniques']}" + ("" if feasible else " (over budget)"),
            values, feasible,
        )


def _plan(cfg: RunConfig, runs_root: Path) -> LatencyPlan:
    """The run's latency plan; a remote device is checked to be reachable before any training."""
    plan = plan_latency(cfg.target, cfg.latency, cfg.agent, cfg.threads, cfg.repeats, runs_root)
    check = getattr(plan.measurer, "check", None)
    if callable(check) and plan.mode != "predict":
        check()
    return plan


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:400]}"


def _check_runs_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"runs directory {root} is not writable: {exc.strerror or exc}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise UserError(f"runs directory {root} is not writable")
