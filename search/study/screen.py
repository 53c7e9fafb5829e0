"""Structure first, pure: whether a candidate can still be worth its fine-tuning.

A candidate's latency and size depend on its structure and quantization, not on its fine-tuned
weights (``search.candidate.build``'s ``screen``), so they are final before any fine-tuning. Its
accuracy is not known yet; it is bounded by a ceiling, the baseline's validation accuracy plus a
margin (compression plus recovery does not beat the model it starts from by more). A candidate that a
feasible front point beats on every objective even at that ceiling, or that is over a latency or size
budget, cannot reach the front: it stops as a PRUNED trial with the reason this module gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from search.config.objectives import OBJECTIVES
from search.front.pareto import is_dominated

#: Points of accuracy a candidate may plausibly gain over the baseline's validation accuracy.
MARGIN_POINTS = 0.5
#: Objectives known before fine-tuning (accuracy is bounded by the ceiling instead).
STRUCTURAL = ("latency", "size")


def accuracy_ceiling(baseline_accuracy: float | None, margin_points: float = MARGIN_POINTS) -> float | None:
    """The best validation accuracy a candidate is credited with before its fine-tuning."""
    return None if baseline_accuracy is None else baseline_accuracy + margin_points / 100


def over_budget(values: Mapping[str, float], budgets: Mapping[str, float | None]) -> str | None:
    """``values`` (objective -> value) over a budget (objective -> its maximum, None: no budget)."""
    for name, limit in budgets.items():
        if limit is not None and name in values and values[name] > limit:
            value, cap = OBJECTIVES[name].format(values[name]), OBJECTIVES[name].format(limit)
            return f"over the {name} budget before fine-tuning: {value} > {cap}"
    return None


def dominated(
    values: Mapping[str, float], ceiling: float | None, front: Sequence[Mapping[str, float]],
    objectives: Sequence[str],
) -> int | None:
    """The index in ``front`` (feasible finished points, objective -> value) of a point that dominates
    the candidate credited with ``ceiling`` accuracy; None when none does or no ceiling is known.
    Objectives other than accuracy and the structural ones are never screened on."""
    if ceiling is None or any(o != "accuracy" and o not in STRUCTURAL for o in objectives):
        return None
    point = [ceiling if o == "accuracy" else values[o] for o in objectives]
    directions = [OBJECTIVES[o].direction for o in objectives]
    for i, other in enumerate(front):
        if is_dominated(point, [[other[o] for o in objectives]], directions):
            return i
    return None
