"""The objective: sample a candidate from the trial, build it, evaluate it, record it.

Plain Optuna define-by-run: ``Objective(trial) -> values``. Raising means the trial failed; the
engine turns that into a FAIL trial with the reason. The Ray backend can reuse it unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.candidate.build import Rungs, build
from search.candidate.evaluate import MB, Metrics, evaluate, input_shape, onnx_accuracy
from search.config.objectives import OBJECTIVES
from search.config.run_config import RunConfig
from search.core.atomic import write_json
from search.core.layout import METRICS_FILE, PARAMS_FILE, trial_dir
from search.core.stages import StageClock
from search.front.pareto import is_dominated, straddles
from search.study.cluster import BASELINE_ATTR
from search.study.constraints import (
    DUPLICATE_ATTR,
    MODEL_ATTR,
    budget_constraints,
    is_feasible,
    structural_constraints,
)
from search.study.halving import ETA, RUNG_ATTR, RUNG_STOP_ATTR, judge, rungs, top_rung
from search.study.progress import Progress
from search.study.runs_root import RunsRoot
from search.study.screen import MARGIN_POINTS, accuracy_ceiling, dominated, over_budget
from search.task.baseline import Task, task_context
from spaces import TECHNIQUES, Candidate, Context, Step
from spaces.space import JointSpace
from targets.deploy import deployability
from targets.graph import analyze
from targets.latency import LatencyPlan
from targets.slot import checkpoint as slot_checkpoint
from targets.slot import slot_for

BASELINE_POLL_S = 1.0
#: A finished trial's attributes that a duplicate carries over: what the candidate scored and where.
REUSED_ATTRS = (
    "accuracy", "latency_ms", "latency_p90_ms", "latency_source", "latency_error_pct", "latency_predicted_ms",
    "latency_low_ms", "latency_high_ms",
    "size_mb", "compressed_mb", "params", "macs", "sparsity", "artifact", "infeasible_reason",
    "recovery_epochs",
)


def same_candidate(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two candidates (``Candidate.to_dict()``, possibly read back from storage) are equal."""
    return json.dumps(a, sort_keys=True, default=list) == json.dumps(b, sort_keys=True, default=list)


def full_budget(candidate: Candidate, training_epochs: int) -> tuple[Candidate, tuple[int, ...] | None]:
    """For ``--fidelity halving``: the candidate with its training step's epochs raised to the full
    recovery budget, the baseline's own training length (at least what the space allowed), and the
    rungs that lead there; unchanged and None when it does not train."""
    for step in candidate.steps:
        key = TECHNIQUES.get(step.technique).epochs_param
        if key is not None:
            top = top_rung(int(step.params[key]), training_epochs)
            return with_epochs(candidate, top), rungs(top)
    return candidate, None


def with_epochs(candidate: Candidate, epochs: int) -> Candidate:
    """The candidate with its training step's epochs (``Technique.epochs_param``) set to ``epochs``."""
    steps = []
    for step in candidate.steps:
        key = TECHNIQUES.get(step.technique).epochs_param
        steps.append(step if key is None else Step(step.technique, {**step.params, key: epochs}))
    return Candidate(tuple(steps))


def baseline_accuracy_key(model: str) -> str:
    """The study attribute holding a base model's validation accuracy (its baseline trial's)."""
    return f"baseline_accuracy:{model}"


def objective_values(metrics: Metrics, objectives: tuple[str, ...]) -> list[float]:
    return [float(getattr(metrics, OBJECTIVES[o].attr)) for o in objectives]


@dataclass(frozen=True)
class Objective:
    """Callable objective over the base models' tasks, the run's space and a target."""

    cfg: RunConfig
    tasks: Mapping[str, Task]
    space: JointSpace
    plan: LatencyPlan
    run_dir: Path
    progress: Progress
    shared: RunsRoot | None = None  # an fsspec runs root each finished trial is copied to
    #: The running trial's stage clock (by trial number).
    clocks: dict[int, StageClock] = field(default_factory=dict, compare=False)

    def publish(self, number: int) -> None:
        """Copy a finished trial's folder to the shared runs root (if any)."""
        if self.shared is not None:
            self.shared.push(trial_dir(self.run_dir, number).relative_to(self.shared.local))

    def context(self, task: Task) -> Context:
        return task_context(task, self.cfg, on_progress=self.progress.stage, checkpoint=slot_checkpoint)

    def __call__(self, trial: optuna.Trial) -> list[float]:
        started = trial.datetime_start  # the engine's work before this call counts as "other"
        before = (datetime.datetime.now() - started).total_seconds() if started else 0.0
        clock = StageClock(since=time.monotonic() - max(before, 0.0))
        self.clocks[trial.number] = clock
        try:
            return self.run(trial, clock)
        finally:
            self.clocks.pop(trial.number, None)
            self.warn_skipped(trial)

    def warn_skipped(self, trial: optuna.Trial) -> None:
        """Images that failed to decode mid-run (any task's data): a warning with the count and the
        first paths, once per newly skipped batch of paths; the trial records the run's total."""
        for task in self.tasks.values():
            message = task.data.corrupt.unreported()
            if message:
                self.progress.warn(message)
                with contextlib.suppress(Exception):  # the trial may already be finished
                    trial.set_user_attr("skipped_images", len(task.data.corrupt))

    def run(self, trial: optuna.Trial, clock: StageClock) -> list[float]:
        baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
        model_name, candidate = self.space.sample(trial, baseline=baseline)
        task = self.tasks[model_name]
        schedule = None
        if self.cfg.fidelity == "halving" and not baseline:
            candidate, schedule = full_budget(candidate, task.training_epochs)
        out = trial_dir(self.run_dir, trial.number)
        out.mkdir(parents=True)  # trial numbers are never reused, so this never overwrites
        record: dict[str, Any] = {
            "trial": trial.number, "model": model_name, "techniques": candidate.label(),
            "candidate": candidate.to_dict(), "optuna_params": trial.params,
        }
        twin = None if baseline else self.finished_twin(trial, model_name, candidate.to_dict())
        if twin is not None:
            record[DUPLICATE_ATTR] = twin.number
        write_json(out / PARAMS_FILE, record)
        trial.set_user_attr(MODEL_ATTR, model_name)
        trial.set_user_attr("techniques", candidate.label())
        trial.set_user_attr("candidate", candidate.to_dict())
        if twin is not None:
            return self.reuse(trial, twin)
        screened = self.cfg.fidelity != "off" and not baseline
        structure: dict[str, Any] = {}  # the screen's latency and size, final for the rungs
        screen = self.screener(trial, task, model_name, structure) if screened else None
        stages = None
        stopped: list[int] = []  # the rung where successive halving stopped the candidate, if it did
        scored: dict[Path, float] = {}  # each rung's file -> its validation accuracy
        if schedule is not None:
            stages = Rungs(schedule, self.rung_judge(trial, task, schedule, structure, stopped, scored))
        path, model = build(candidate, task, out, self.context(task), self.stage, screen=screen, rungs=stages)
        if schedule is not None:
            trial.set_user_attr("recovery_epochs", stopped[0] if stopped else schedule[-1])
            if stopped:  # the model it is: its rung's file, recovered for that many epochs
                candidate = with_epochs(candidate, stopped[0])
                record.update(techniques=candidate.label(), candidate=candidate.to_dict())
                write_json(out / PARAMS_FILE, record)
                trial.set_user_attr("techniques", candidate.label())
                trial.set_user_attr("candidate", candidate.to_dict())
        metrics = evaluate(path, model, task, task.data.val, self.plan.scorer, self.stage,
                           accuracy=scored.get(path))
        if self.plan.mode == "hybrid" and self.worth_measuring(trial, metrics):
            self.stage("latency (measured)", "latency")
            measured = self.plan.measurer.latency(path, input_shape(path, task.input_shape))
            trial.set_user_attr("latency_predicted_ms", metrics.latency_ms)
            metrics = replace(
                metrics, latency_ms=measured.median_ms, latency_p90_ms=measured.p90_ms,
                latency_source=measured.source, latency_error_pct=None, latency_low_ms=None,
                latency_high_ms=None,
            )
        clock.enter("other")
        for key, value in metrics.to_dict().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("artifact", str(path.relative_to(self.run_dir)))
        baseline_accuracy = None if baseline else self.baseline_accuracy(trial, model_name)
        violations = budget_constraints(metrics, self.cfg, baseline_accuracy)
        if self.plan.profile is not None:
            verdict = deployability(analyze(path, batch=task.input_shape[0]), self.plan.profile)
            violations["deployable"] = verdict.violation
            if verdict.reasons:
                trial.set_user_attr("infeasible_reason", "; ".join(verdict.reasons))
        for key, value in violations.items():
            trial.set_constraint(key, value)
        if baseline:
            trial.study.set_user_attr(baseline_accuracy_key(model_name), metrics.accuracy)
        stages = clock.totals()  # as late as possible: the bookkeeping above counts as "other"
        write_json(out / METRICS_FILE, {
            "split": "val", **metrics.to_dict(), "constraints": violations, "stages": stages,
        })
        for key, value in stages.items():
            trial.set_user_attr(key, value)
        return objective_values(metrics, self.cfg.objectives)

    def screener(
        self, trial: optuna.Trial, task: Task, model: str, known: dict[str, Any]
    ) -> Callable[[Path], None]:
        """``build``'s screen for ``--fidelity structure`` and ``halving``: the structure's latency (the
        run's latency plan) and size are final (kept in ``known`` for the rungs); a candidate over a
        budget, or beaten by a feasible finished trial even at the baseline's accuracy plus a margin
        (``search.study.screen``), stops here as PRUNED, keeping its structure's file, latency, size
        and the reason. Budgets set constraints too, so the sampler files a budget-pruned trial as
        infeasible."""

        def screen(path: Path) -> None:
            self.stage("structure: latency and size before fine-tuning", "latency")
            latency = self.plan.scorer.latency(path, input_shape(path, task.input_shape))
            values = {"latency": latency.median_ms, "size": path.stat().st_size / MB}
            known.update(values, latency_source=latency.source)
            budgets = {"latency": self.cfg.max_latency_ms, "size": self.cfg.max_size_mb}
            why = over_budget(values, budgets)
            if why is None:
                front = self.feasible_front(trial)
                ceiling = accuracy_ceiling(self.baseline_accuracy(trial, model))
                beaten = dominated(values, ceiling, [v for _, v in front], self.cfg.objectives)
                if beaten is not None:
                    why = (f"beaten before fine-tuning by trial {front[beaten][0]} even at accuracy "
                           f"{ceiling:.4f} (baseline + {MARGIN_POINTS:g} points)")
            if why is not None:
                self.stop(trial, why, path, known)

        return screen

    def rung_judge(
        self, trial: optuna.Trial, task: Task, schedule: tuple[int, ...], known: dict[str, Any],
        stopped: list[int], scored: dict[Path, float],
    ) -> Callable[[int, Path], bool]:
        """``build``'s judge for ``--fidelity halving`` (``search.study.halving``): after a rung's
        epochs the artifact's validation accuracy in onnxruntime, with the structure's latency and
        size, is stored as ``rung:EPOCHS``; the candidate goes on only if it ranks in the top 1/eta of
        every trial that reached the rung. One ranked out ends there (its epochs appended to
        ``stopped``): its rung's file is a finished recovery of that many epochs, scored and kept as
        the trial's model (``rung_stop`` says why it went no further); its accuracy, in ``scored``, is
        not scored again."""

        def at_rung(epochs: int, path: Path) -> bool:
            self.stage(f"rung {epochs}/{schedule[-1]} epochs: accuracy", "accuracy")
            scored[path] = onnx_accuracy(path, task.data.val)
            values = {"accuracy": scored[path], **known}
            point = {o: values[o] for o in self.cfg.objectives}
            key = RUNG_ATTR.format(epochs=epochs)
            trial.set_user_attr(key, point)
            trial.set_user_attr("recovery_epochs", epochs)
            peers = [
                t.user_attrs[key] for t in trial.study.get_trials(deepcopy=False)
                if t.number != trial.number and key in t.user_attrs
            ]
            values_of = [[p[o] for o in self.cfg.objectives] for p in peers]
            verdict = judge([point[o] for o in self.cfg.objectives], values_of, self.cfg.directions)
            if verdict.promoted:
                return True
            stopped.append(epochs)
            why = (f"the top {verdict.keep} go on" if verdict.keep
                   else f"none goes on before {ETA} have reached it")
            trial.set_user_attr(RUNG_STOP_ATTR, (
                f"kept at {epochs} of {schedule[-1]} fine-tuning epochs: rank {verdict.rank} of "
                f"{verdict.peers} at this rung, {why} (successive halving, eta {ETA})"
            ))
            return False

        return at_rung

    def stop(self, trial: optuna.Trial, why: str, path: Path, known: Mapping[str, Any]) -> None:
        """End the trial as PRUNED with ``why``: its file so far, the structure's latency and size, and
        the budget constraints they decide."""
        trial.set_user_attr("latency_ms", known["latency"])
        trial.set_user_attr("latency_source", known["latency_source"])
        trial.set_user_attr("size_mb", known["size"])
        trial.set_user_attr("artifact", str(path.relative_to(self.run_dir)))
        for key, value in structural_constraints(known["latency"], known["size"], self.cfg).items():
            trial.set_constraint(key, value)
        raise optuna.TrialPruned(why)

    def feasible_front(self, trial: optuna.Trial) -> list[tuple[int, dict[str, float]]]:
        """Finished feasible trials (duplicates left out) as (number, objective -> value)."""
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return [
            (t.number, dict(zip(self.cfg.objectives, t.values))) for t in done
            if is_feasible(t) and DUPLICATE_ATTR not in t.user_attrs
        ]

    def finished_twin(
        self, trial: optuna.Trial, model: str, candidate: Mapping[str, Any]
    ) -> optuna.trial.FrozenTrial | None:
        """A completed trial (not itself a duplicate) that built the same candidate of the same model."""
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return next((
            t for t in done
            if t.number != trial.number and DUPLICATE_ATTR not in t.user_attrs
            and t.user_attrs.get(MODEL_ATTR) == model
            and same_candidate(t.user_attrs.get("candidate", {}), candidate)
        ), None)

    def reuse(self, trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> list[float]:
        """A candidate the sampler proposed again costs no training: the trial is told the twin's
        values and constraints (so the sampler learns the point once more) and names the twin in
        ``duplicate_of``; the front and the tables count the twin only."""
        self.progress.stage(f"same candidate as trial {twin.number}: its result reused")
        trial.set_user_attr(DUPLICATE_ATTR, twin.number)
        for key in REUSED_ATTRS:
            if key in twin.user_attrs:
                trial.set_user_attr(key, twin.user_attrs[key])
        for key, value in twin.constraints.items():
            trial.set_constraint(key, value)
        return list(twin.values)

    def stage(self, name: str, kind: str = "other") -> None:
        """A new stage of the trial: timed as ``kind`` (``search.core.stages.STAGES``), shown, and a
        point where a parallel trial's measurement may take the device (``targets.slot.checkpoint``)."""
        for clock in self.clocks.values():
            clock.enter(kind)
        slot_checkpoint()
        self.progress.stage(name)

    def baseline_accuracy(self, trial: optuna.Trial, model: str) -> float | None:
        """The base model's validation accuracy; while another process is still running that
        baseline (parallel workers, Ray), wait for it rather than judge the budget without it. The
        wait gives up this trial's hold on the device slot: the baseline may need it to measure."""
        device = self.plan.local_device
        with slot_for(device).idle() if device else contextlib.nullcontext():
            while True:
                value = trial.study.user_attrs.get(baseline_accuracy_key(model))
                if value is not None:
                    return value
                running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if not any(
                    t.user_attrs.get(BASELINE_ATTR) and t.user_attrs.get(MODEL_ATTR) == model
                    and t.number != trial.number for t in running
                ):
                    return None
                self.progress.stage(f"waiting for the {model} baseline running elsewhere")
                time.sleep(BASELINE_POLL_S)

    def worth_measuring(self, trial: optuna.Trial, metrics: Metrics) -> bool:
        """Hybrid: measure a baseline, and a candidate whose latency interval straddles the front of
        the finished feasible trials (``straddles``): one dominated even at its interval's fast end
        cannot join the front, one undominated even at its slow end joins it whatever the truth
        (the final front is measured anyway); only the ones in between need the device."""
        if trial.user_attrs.get(BASELINE_ATTR):
            return True
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        others = [t.values for t in done if is_feasible(t)]
        if metrics.latency_low_ms is None or metrics.latency_high_ms is None:  # no interval (a
            # calibration from before intervals): measure what its point estimate puts on the front
            point = objective_values(metrics, self.cfg.objectives)
            return not is_dominated(point, others, self.cfg.directions)
        ends = [objective_values(replace(metrics, latency_ms=v), self.cfg.objectives)
                for v in (metrics.latency_low_ms, metrics.latency_high_ms)]
        return straddles(ends[0], ends[1], others, self.cfg.directions)
