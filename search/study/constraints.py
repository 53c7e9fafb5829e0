"""Feasibility, pure: the budgets as Optuna constraint values, and which trials meet them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from search.study.cluster import BASELINE_ATTR

if TYPE_CHECKING:  # types only: feasibility needs neither torch nor the config's validation
    from search.candidate.evaluate import Metrics
    from search.config.run_config import RunConfig

MODEL_ATTR = "model"
#: The user attribute naming the finished trial whose candidate a duplicate trial repeats.
DUPLICATE_ATTR = "duplicate_of"
#: The user attribute saying why a candidate stopped early: before fine-tuning or at a rung (PRUNED).
PRUNED_ATTR = "pruned_reason"


def budget_constraints(
    metrics: Metrics, cfg: RunConfig, baseline_accuracy: float | None
) -> dict[str, float]:
    """Optuna constraint values (feasible when <= 0) for the budgets the user set.

    ``max_accuracy_drop`` is in points below the baseline's validation accuracy; it keeps models
    at chance level (fast, tiny, useless) off the front by default.
    """
    out = {}
    if cfg.max_accuracy_drop is not None:
        reference = metrics.accuracy if baseline_accuracy is None else baseline_accuracy
        out["max_accuracy_drop"] = (reference - metrics.accuracy) * 100 - cfg.max_accuracy_drop
    if cfg.min_accuracy is not None:
        out["min_accuracy"] = cfg.min_accuracy - metrics.accuracy
    return {**out, **structural_constraints(metrics.latency_ms, metrics.size_mb, cfg)}


def structural_constraints(latency_ms: float, size_mb: float, cfg: RunConfig) -> dict[str, float]:
    """The latency and size budgets' constraint values: known from a candidate's structure alone,
    before fine-tuning (``search.study.screen``)."""
    out = {}
    if cfg.max_latency_ms is not None:
        out["max_latency_ms"] = latency_ms - cfg.max_latency_ms
    if cfg.max_size_mb is not None:
        out["max_size_mb"] = size_mb - cfg.max_size_mb
    return out


def baseline_trial(
    trials: list[optuna.trial.FrozenTrial], model: str | None = None
) -> optuna.trial.FrozenTrial | None:
    """The completed uncompressed baseline of ``model`` (None: the first one; the first model's is
    trial 0 unless it was interrupted and re-run)."""
    return next(
        (
            t for t in trials
            if t.state == TrialState.COMPLETE and t.user_attrs.get(BASELINE_ATTR)
            and (model is None or t.user_attrs.get(MODEL_ATTR) == model)
        ),
        None,
    )


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Optuna's rule: feasible when every constraint value is zero or less."""
    return all(v <= 0 for v in trial.constraints.values())
