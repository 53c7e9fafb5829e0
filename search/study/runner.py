"""One trial, run the same way by every backend: the driver's loop, ``edgepareto worker``, a Ray trial.

Around the objective: the owner tag and heartbeat (see ``search.study.cluster``), the ``--trial-timeout``
watchdog, the device slot (``targets.slot``) that keeps this trial's work from overlapping a
measurement on the same device, and the trial's log file that takes what libraries log or print
(``search.core.trial_log``). Failures become an ``Outcome`` with a reason, never an exception,
except ``UserError`` (the run itself cannot go on).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search.core.atomic import write_json
from search.core.errors import UserError
from search.core.layout import METRICS_FILE, TRIAL_LOG, trial_dir
from search.core.text import reason
from search.core.trial_log import library_output_to
from search.study.cluster import OWNER_ATTR, Heartbeat, owner
from search.study.constraints import PRUNED_ATTR, is_feasible
from search.study.interrupt import Interrupts
from search.study.objective import Objective
from search.study.progress import Progress
from search.study.watchdog import Deadline, deadline
from targets.slot import slot_for

#: Exit status of a process that ended itself because a trial hung in native code.
EXIT_HUNG = 124


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: COMPLETE with values, FAIL or PRUNED with a reason."""

    state: TrialState
    values: tuple[float, ...] | None = None
    reason: str | None = None


def set_threads(cpus: int | None) -> None:
    """Torch (and, through ``torch.get_num_threads``, the accuracy session) use ``cpus`` threads."""
    if cpus is not None and torch.get_num_threads() != cpus:
        torch.set_num_threads(cpus)


def run_trial(
    trial: optuna.Trial, objective: Objective, interrupts: Interrupts | None = None
) -> Outcome:
    """Evaluate ``trial``; record a failure's reason on the trial and in its ``metrics.json``; copy
    the trial's folder to a shared runs root."""
    outcome = _run(trial, objective, interrupts)
    try:
        objective.publish(trial.number)
    except Exception as exc:  # the artifacts did not reach the other machines: not a usable trial
        return _failed(trial, objective, f"cannot copy the trial to the shared runs root: {reason(exc)}")
    return outcome


def _run(trial: optuna.Trial, objective: Objective, interrupts: Interrupts | None) -> Outcome:
    cfg = objective.cfg
    set_threads(cfg.cpus_per_trial)
    trial.set_user_attr(OWNER_ATTR, owner())
    device = objective.plan.local_device
    device_slot = slot_for(device) if device else None
    slot = device_slot.work() if device_slot else contextlib.nullcontext()
    waited = device_slot.waited_s if device_slot else 0.0
    limit = Deadline(None)
    try:
        with Heartbeat(trial.study, trial._trial_id), \
                deadline(cfg.trial_timeout, on_hang=lambda d: _hung(trial, objective, d)) as limit, slot, \
                library_output_to(trial_dir(objective.run_dir, trial.number) / TRIAL_LOG):
            values = objective(trial)
    except UserError:
        raise
    except optuna.TrialPruned as exc:  # stopped before fine-tuning (search.study.screen): not a failure
        return _pruned(trial, objective, str(exc))
    except Exception as exc:  # any failure of a candidate is a FAIL trial, never a crash
        if interrupts is not None:
            interrupts.check()  # ...unless it was Ctrl-C that some library turned into an error
        return _failed(trial, objective, limit.reason if limit.fired else reason(exc))
    if limit.fired:  # the timeout's exception was swallowed somewhere: the result is not trustworthy
        return _failed(trial, objective, limit.reason)
    if device_slot:  # how long this trial's measurements waited for other trials' work on the device
        trial.set_user_attr("slot_wait_s", round(device_slot.waited_s - waited, 4))
    return Outcome(TrialState.COMPLETE, tuple(values))


def announce(progress: Progress, frozen: optuna.trial.FrozenTrial) -> None:
    """One progress line for a told trial: its techniques (and whether over budget), or why it failed."""
    if frozen.state == TrialState.COMPLETE:
        feasible = is_feasible(frozen)
        label = frozen.user_attrs.get("techniques", "") + ("" if feasible else " (over budget)")
        progress.done(label, frozen.values, feasible)
    elif frozen.state == TrialState.PRUNED:
        progress.done(f"PRUNED {frozen.user_attrs.get(PRUNED_ATTR, '')}", None)
    else:
        progress.done(f"FAIL {frozen.user_attrs.get('fail_reason', 'no reason recorded')}", None)


def _failed(trial: optuna.Trial, objective: Objective, reason: str) -> Outcome:
    with contextlib.suppress(UpdateFinishedTrialError):  # another process re-queued it meanwhile
        trial.set_user_attr("fail_reason", reason)
    out = trial_dir(objective.run_dir, trial.number)
    if out.is_dir():
        write_json(out / METRICS_FILE, {"state": "FAIL", "fail_reason": reason})
    return Outcome(TrialState.FAIL, None, reason)


def _pruned(trial: optuna.Trial, objective: Objective, reason: str) -> Outcome:
    """A candidate stopped before fine-tuning: its reason beside the metrics it has."""
    with contextlib.suppress(UpdateFinishedTrialError):
        trial.set_user_attr(PRUNED_ATTR, reason)
    out = trial_dir(objective.run_dir, trial.number)
    if out.is_dir():
        write_json(out / METRICS_FILE, {"state": "PRUNED", PRUNED_ATTR: reason})
    return Outcome(TrialState.PRUNED, None, reason)


def _hung(trial: optuna.Trial, objective: Objective, limit: Deadline) -> None:
    """The trial is stuck in native code past its timeout: record the failure, end the process."""
    reason = limit.reason + " (stuck in native code; the process ended itself)"
    with contextlib.suppress(Exception):
        _failed(trial, objective, reason)
        trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    print(f"edgepareto: error: trial {trial.number}: {reason}", file=sys.stderr, flush=True)
    os._exit(EXIT_HUNG)
