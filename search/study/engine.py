"""The search engine: an Optuna study driven through ask/tell, with resume and failure handling.

Trial states map explicitly: the objective returns -> COMPLETE; it raises -> FAIL with the reason
in the trial's ``fail_reason``; the process dies mid-trial -> the trial stays RUNNING in storage until
a process notices (``search.study.cluster``: its owner is dead, or its heartbeat is stale) and marks it FAIL
(``interrupted``, not counted) and enqueues the same parameters again. The same loop runs in the
driver and in every ``edgepareto worker``; ``--backend ray`` hands the trials to Ray Tune instead.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from torch import nn

from search.config.objectives import OBJECTIVES
from search.config.run_config import RunConfig
from search.core.atomic import write_text
from search.core.errors import UserError
from search.front.finalize import finalize
from search.front.run import Report
from search.study.cluster import (
    describe,
    finished_count,
    give_back,
    open_storage,
    recover,
    running_count,
    surplus,
)
from search.study.halving import rungs, top_rung
from search.study.interrupt import Interrupts
from search.study.objective import BASELINE_ATTR, Objective
from search.study.progress import Progress
from search.study.runner import announce, run_trial
from search.study.runs_root import RunsRoot, open_root
from search.task import models
from search.task.baseline import CACHE_DIR, Task, check_inputs, prepare_all, write_unreadable
from search.task.families import img_size_for, resolve_space
from spaces import Space
from spaces.space import AUTO, JointSpace
from spaces.vit import is_vit
from targets.latency import CALIBRATIONS, LatencyPlan, plan_latency

#: Study attributes that let a worker join a run from its storage alone.
CONFIG_ATTR = "edgepareto:config"


SPACE_ATTR = "edgepareto:space"




#: Seconds between looks at the study while the last trials run in other processes.
WAIT_S = 1.0


@dataclass(frozen=True)
class Run:
    """Where a run lives: ``root`` is this process's (local) runs root; ``shared`` mirrors it to an
    fsspec URL when ``--runs-dir`` is one (see ``search.study.runs_root``)."""

    name: str
    root: Path
    shared: RunsRoot | None = None

    @classmethod
    def at(cls, name: str, runs_dir: str | Path) -> Run:
        root = open_root(runs_dir)
        return cls(name, root.local, root if root.shared else None)

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def mirror(self) -> RunsRoot:
        return self.shared or RunsRoot(self.root)

    def pull_common(self) -> None:
        """Trained baselines and calibrations other machines made (a shared root only)."""
        self.mirror.pull(CACHE_DIR)
        self.mirror.pull(CALIBRATIONS)

    def storage_url(self, cfg: RunConfig) -> str:
        return cfg.storage or f"sqlite:///{(self.dir / 'study.db').resolve()}"


def run_search(cfg: RunConfig, progress: Progress | None = None) -> Report:
    """Start a new run. Validates every input before anything is written."""
    progress = progress or Progress(cfg.objectives, cfg.directions)
    name = cfg.name or dt.datetime.now().strftime("search-%Y%m%d-%H%M%S")
    cfg = cfg.replace(name=name)
    run = Run.at(name, cfg.runs_dir)
    if run.shared is not None and (cfg.storage is None or cfg.storage.startswith("sqlite")):
        raise UserError(
            f"--runs-dir {cfg.runs_dir} is shared through fsspec: the study needs a database server "
            "every machine reaches, e.g. --storage postgresql://USER@HOST/DB"
        )
    check_inputs(cfg)  # names, and the data set's memory at --img-size
    _check_runs_root(run.root)
    if run.dir.exists() or run.mirror.exists(name):
        raise UserError(
            f"run {name!r} already exists in {run.root}; continue it with --resume {name} "
            "or choose another --name"
        )
    if cfg.space != AUTO:
        Space.load(cfg.space)  # a bad space fails before any training
    run.pull_common()
    plan = _plan(cfg, run.root)
    storage = open_storage(cfg.storage) if cfg.storage else None
    if storage is not None and name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        raise UserError(f"storage {cfg.storage} already has a study named {name!r}; use --resume")
    _start_backend(cfg)
    # resolve and check each model's space on an untrained instance, before any training
    untrained = {m: models.create(m, 2, img_size_for(m, cfg.img_size), cfg.patch_size) for m in cfg.models}
    models.check_patch_size(cfg.patch_size, untrained)
    space = space_for(cfg.space, untrained)
    if cfg.fidelity == "halving":
        space = space.epochs_fixed()
    tasks = prepare_all(cfg, run.root, progress.log, progress.warn)
    run.mirror.push(CACHE_DIR)
    run.dir.mkdir(parents=True)
    write_text(run.dir / "run.yaml", config_yaml(cfg))
    write_unreadable(run.dir, tasks)
    write_text(run.dir / "space.yaml", yaml.safe_dump(space.to_mapping(), sort_keys=False))
    run.mirror.push(name)
    study = optuna.create_study(
        study_name=name, storage=storage or open_storage(run.storage_url(cfg)),
        directions=cfg.directions, sampler=cfg.make_sampler(),
    )
    _seed(study, cfg, space)
    progress.log(f"run {name}: {run.dir}")
    progress.log("space " + space.describe())
    if cfg.fidelity == "halving":
        for model, bound in ((m, s.epochs_bound()) for m, s in space.spaces):
            if bound is not None:
                schedule = ", ".join(map(str, rungs(top_rung(bound, tasks[model].training_epochs))))
                progress.log(f"fidelity halving: {model} fine-tunes in rungs of {schedule} epochs; "
                             "a third of the candidates at a rung go on")
    progress.log(plan.describe())
    return _execute(cfg, run, study, tasks, space, plan, progress)


def _seed(study: optuna.Study, cfg: RunConfig, space: JointSpace) -> None:
    """A new study's attributes (objectives, and the config and space a worker joins with), then its
    first trials queued: each model's baseline, and each technique's recipe with ``warm_start``."""
    study.set_metric_names([OBJECTIVES[o].study_metric for o in cfg.objectives])  # optuna-dashboard axes
    study.set_user_attr(CONFIG_ATTR, cfg.to_dict())
    study.set_user_attr(SPACE_ATTR, space.to_mapping())
    for model in space.models:
        study.enqueue_trial(space.baseline_params(model), user_attrs={BASELINE_ATTR: True})
    if cfg.warm_start:  # no more than the trial budget leaves room for (none left waiting at the end)
        for params in space.recipes()[: max(0, cfg.trials - len(space.models))]:
            study.enqueue_trial(params, user_attrs={"recipe": True})


def config_yaml(cfg: RunConfig) -> str:
    """``run.yaml``: the resolved settings (file, flags and defaults), with how to reproduce the run."""
    header = (
        f"# edgepareto run {cfg.name}: every setting (config file, flags, defaults).\n"
        f"# Reproduce: edgepareto search --config {Path(cfg.runs_dir) / str(cfg.name) / 'run.yaml'} "
        "--name NEW_NAME\n"
        "# null: chosen automatically (img_size, epochs and learning rates per model family: edgepareto\n"
        "# models; the ViT patch size from img_size, the latency mode from the target). The searched\n"
        "# space is saved in space.yaml.\n"
    )
    return header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def space_for(spec: str, base_models: Mapping[str, nn.Module]) -> JointSpace:
    """Each base model's space (``auto``: by family, ``search.task.families``), checked against the model."""
    spaces = []
    for name, model in base_models.items():
        space = Space.load(resolve_space(spec, name, is_vit(model)))
        space.check(model, name)
        spaces.append((name, space))
    return JointSpace(tuple(spaces))


def load_space(run: Run, cfg: RunConfig) -> JointSpace:
    """The resolved space saved beside a run (``space.yaml``)."""
    path = run.dir / "space.yaml"
    if not path.is_file():
        raise UserError(f"run {run.name!r} in {run.root} has no space.yaml: it cannot be resumed")
    data = yaml.safe_load(path.read_text())
    if isinstance(data, Mapping) and "models" in data:
        return JointSpace.from_mapping(data, where=run.name)
    return JointSpace(((cfg.models[0], Space.from_mapping(data, where=run.name)),))


#: Settings ``--resume`` may change: how long and where it runs, never what it searches.
RESUMABLE = (
    "trials", "timeout", "trial_timeout", "ray_address", "max_concurrent", "cpus_per_trial", "ca_file",
)


def resume_search(
    name: str, runs_dir: str = "runs", progress: Progress | None = None, quiet: bool = False,
    **changes: object,
) -> Report:
    """Continue an interrupted (or finished) run; the settings in ``RESUMABLE`` may change."""
    run = Run.at(name, runs_dir)
    run.mirror.pull(name, recursive=False)
    cfg = load_config(run)
    bad = sorted(set(changes) - set(RESUMABLE))
    if bad:
        raise UserError(f"--resume cannot change {', '.join(bad)}")
    cfg = cfg.replace(**{k: v for k, v in changes.items() if v is not None})
    check_inputs(cfg)
    _check_runs_root(run.root)
    progress = progress or Progress(cfg.objectives, cfg.directions, quiet=quiet)
    space = load_space(run, cfg)
    run.pull_common()
    plan = _plan(cfg, run.root)
    _start_backend(cfg)
    tasks = prepare_all(cfg, run.root, progress.log, progress.warn)
    write_unreadable(run.dir, tasks)
    storage = open_storage(run.storage_url(cfg))
    started = (run.dir / "trials").is_dir()
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=cfg.make_sampler())
    except KeyError:
        if started:
            raise UserError(f"the storage of run {name!r} has no study of that name") from None
        # stopped between writing run.yaml and making its study (a kill at that moment): make it now
        study = optuna.create_study(study_name=name, storage=storage, directions=cfg.directions,
                                    sampler=cfg.make_sampler())
    if not study.trials and not started:  # stopped before its first trials were queued
        progress.log(f"resume {name}: the run stopped before its first trial; starting it")
        _seed(study, cfg, space)
    recovered = recover(study, everything=True)
    if recovered:
        progress.log(f"resume: re-queued interrupted trial(s) {describe(recovered)}")
    progress.log(f"resume {name}: {finished_count(study)} of {cfg.trials} trials done")
    return _execute(cfg, run, study, tasks, space, plan, progress)


def load_config(run: Run) -> RunConfig:
    path = run.dir / "run.yaml"
    if not path.is_file():
        raise UserError(f"no run {run.name!r} in {run.root} (missing {path})")
    return RunConfig.from_dict(yaml.safe_load(path.read_text()))


def _execute(
    cfg: RunConfig, run: Run, study: optuna.Study, tasks: Mapping[str, Task], space: JointSpace,
    plan: LatencyPlan, progress: Progress,
) -> Report:
    objective = Objective(cfg, tasks, space, plan, run.dir, progress, run.shared)
    with Interrupts() as interrupts:
        if cfg.backend == "ray":
            from search.study.ray_backend import run_ray

            run_ray(cfg, run.storage_url(cfg), study, objective, progress)
        else:
            _loop(cfg, study, objective, progress, interrupts)
    run.mirror.pull(f"{run.name}/trials")  # the trials other machines ran
    report = finalize(study, cfg, tasks, plan, run.dir, progress)
    run.mirror.push(run.name, recursive=False)
    return report


def _loop(
    cfg: RunConfig, study: optuna.Study, objective: Objective, progress: Progress,
    interrupts: Interrupts, stop_on_baseline_failure: bool = True,
) -> int:
    """Ask, evaluate, tell until ``cfg.trials`` count; returns how many trials this process ran.

    Trials of other processes on the same study count too: when the rest are running elsewhere this
    waits for them (re-queuing and running any whose process died). A trial cut short by Ctrl-C is
    never told: it stays RUNNING, and ``resume`` re-queues it."""
    start = time.monotonic()
    ran = 0
    while True:
        recovered = recover(study)
        if recovered:
            progress.log(f"re-queued trial(s) {describe(recovered)}: their worker stopped mid-trial")
        done = finished_count(study)
        if done >= cfg.trials:
            break
        if cfg.timeout is not None and time.monotonic() - start >= cfg.timeout:
            progress.log(f"timeout of {cfg.timeout:g} s reached after {done} trials")
            break
        if done + running_count(study) >= cfg.trials:  # the last trials run in other processes
            interrupts.check()
            time.sleep(WAIT_S)
            continue
        trial = study.ask()
        if surplus(study, trial.number, cfg.trials):
            give_back(study, trial)
            continue
        progress.trial(done + 1, cfg.trials, trial.number)
        outcome = run_trial(trial, objective, interrupts)
        ran += 1
        if outcome.state == TrialState.COMPLETE:
            interrupts.check()  # a swallowed Ctrl-C may have cut the evaluation short
        values = list(outcome.values) if outcome.values else None
        try:
            frozen = study.tell(trial, values, outcome.state, skip_if_finished=True)
        except UpdateFinishedTrialError:  # failed by another process between tell's check and its write
            frozen = None
        if frozen is None or frozen.state != outcome.state:  # re-queued by a process that saw no heartbeat
            progress.done(f"dropped: another process re-queued trial {trial.number} meanwhile", None)
            continue
        announce(progress, frozen)
        baseline = trial.user_attrs.get(BASELINE_ATTR)
        if outcome.state == TrialState.FAIL and baseline and stop_on_baseline_failure:
            raise UserError(f"the uncompressed baseline failed, nothing to compare: {outcome.reason}")
    return ran


def run_worker(
    name: str, storage: str, runs_dir: str | None = None, quiet: bool = False,
) -> int:
    """Join the run ``name`` in ``storage`` as one more worker (``edgepareto worker``): run its
    trials until the run has ``trials`` of them; artifacts go to the run's folder in ``runs_dir``
    (default: the driver's runs root, which must be shared). Returns the trials this worker ran."""
    study_storage = open_storage(storage)
    try:
        attrs = optuna.load_study(study_name=name, storage=study_storage).user_attrs
    except KeyError:
        raise UserError(f"storage {storage} has no study named {name!r}") from None
    if CONFIG_ATTR not in attrs:
        raise UserError(f"study {name!r} in {storage} was not created by edgepareto search")
    cfg = RunConfig.from_dict(attrs[CONFIG_ATTR])
    if runs_dir is not None:
        cfg = cfg.replace(runs_dir=runs_dir)
    if cfg.backend == "ray":
        raise UserError(f"run {name!r} uses --backend ray; add nodes to its Ray cluster instead")
    check_inputs(cfg)
    run = Run.at(name, cfg.runs_dir)
    _check_runs_root(run.root)
    run.pull_common()
    progress = Progress(cfg.objectives, cfg.directions, quiet=quiet)
    space = JointSpace.from_mapping(attrs[SPACE_ATTR], where=name)
    plan = _plan(cfg, run.root)
    tasks = prepare_all(cfg, run.root, progress.log, progress.warn)
    # each worker samples with its own seed: equal seeds would propose the same candidates
    sampler_cfg = cfg.replace(sampler_seed=random.SystemRandom().randrange(2**31))
    study = optuna.load_study(
        study_name=name, storage=study_storage, sampler=sampler_cfg.make_sampler()
    )
    run.dir.mkdir(parents=True, exist_ok=True)
    write_unreadable(run.dir, tasks)
    progress.log(f"worker on run {name}: {finished_count(study)} of {cfg.trials} trials done")
    objective = Objective(cfg, tasks, space, plan, run.dir, progress, run.shared)
    with Interrupts() as interrupts:
        ran = _loop(cfg, study, objective, progress, interrupts, stop_on_baseline_failure=False)
    progress.log(f"worker done: the run has {finished_count(study)} of {cfg.trials} trials")
    return ran


def _start_backend(cfg: RunConfig) -> None:
    """Ray: installed and its cluster reachable, checked before any training."""
    if cfg.backend == "ray":
        from search.study.ray_backend import connect

        connect(cfg.ray_address)


def _plan(cfg: RunConfig, runs_root: Path) -> LatencyPlan:
    """The run's latency plan; a remote device is checked to be reachable before any training."""
    plan = plan_latency(cfg.target, cfg.latency, cfg.agent, cfg.threads, cfg.repeats, runs_root, cfg.ca_file)
    if plan.measurer is not None and plan.mode != "predict":
        plan.measurer.check()
    return plan


def _check_runs_root(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"runs directory {root} is not writable: {exc.strerror or exc}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise UserError(f"runs directory {root} is not writable")
