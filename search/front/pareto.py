"""Pareto maths on plain numbers: every objective is turned into minimisation first.

Also the one normalised hypervolume of a run (:func:`hypervolume_curve`), shared by the report and the
benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from search.config.objectives import OBJECTIVES

DIRECTIONS = ("minimize", "maximize")


def to_minimisation(points: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Negate the maximised columns, so that smaller is better everywhere."""
    arr = np.asarray(points, dtype=float).reshape(len(points), len(directions))
    for d in directions:
        if d not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {d!r}")
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return arr * signs


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order. Equal points are all kept.

    A point is dominated when another is no worse in every objective and better in one.
    """
    if len(points) == 0:
        return []
    arr = to_minimisation(points, directions)
    front = []
    for i, p in enumerate(arr):
        no_worse = np.all(arr <= p, axis=1)
        better = np.any(arr < p, axis=1)
        if not np.any(no_worse & better):
            front.append(i)
    return front


def is_dominated(
    point: Sequence[float], others: Sequence[Sequence[float]], directions: Sequence[str]
) -> bool:
    """Whether any of ``others`` is no worse than ``point`` everywhere and better somewhere."""
    if len(others) == 0:
        return False
    arr = to_minimisation(others, directions)
    p = to_minimisation([point], directions)[0]
    return bool(np.any(np.all(arr <= p, axis=1) & np.any(arr < p, axis=1)))


def straddles(
    optimistic: Sequence[float], pessimistic: Sequence[float], others: Sequence[Sequence[float]],
    directions: Sequence[str],
) -> bool:
    """Whether a point known only within an interval straddles the front of ``others``: at its
    optimistic end (every uncertain objective at its best bound) nothing dominates it, at its
    pessimistic end something does. Such a point may or may not join the front; one dominated even
    at its best is out for sure, one undominated even at its worst is in for sure."""
    return not is_dominated(optimistic, others, directions) and is_dominated(pessimistic, others, directions)


def nondominated_order(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of ``points`` best first, NSGA-II's order (Deb et al., 2002): by non-domination rank
    (the Pareto front first, then the front of what is left, ...), and within a rank by crowding
    distance, largest first (the rank's extreme points first: they are infinitely far), then index."""
    if len(points) == 0:
        return []
    arr = to_minimisation(points, directions)
    left = list(range(len(arr)))
    order: list[int] = []
    while left:
        front = [left[i] for i in pareto_front(arr[left], ["minimize"] * arr.shape[1])]
        distance = crowding_distance(arr[front])
        order += [front[i] for i in sorted(range(len(front)), key=lambda i: (-distance[i], front[i]))]
        chosen = set(front)
        left = [i for i in left if i not in chosen]
    return order


def crowding_distance(points: np.ndarray) -> list[float]:
    """NSGA-II's crowding distance of each point of one front (minimisation, any scale): the sum over
    objectives of the normalised gap between its two neighbours; the extremes are infinite."""
    n, m = points.shape
    distance = [0.0] * n
    if n <= 2:
        return [float("inf")] * n
    for k in range(m):
        ranked = sorted(range(n), key=lambda i: (points[i, k], i))
        span = float(points[ranked[-1], k] - points[ranked[0], k])
        distance[ranked[0]] = distance[ranked[-1]] = float("inf")
        if span <= 0:
            continue
        for j in range(1, n - 1):
            distance[ranked[j]] += float(points[ranked[j + 1], k] - points[ranked[j - 1], k]) / span
    return distance


def hypervolume(
    points: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]
) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (in the original units).

    Points that do not dominate the reference add nothing. Uses Optuna's WFG implementation.
    """
    from optuna._hypervolume import compute_hypervolume

    if len(points) == 0:
        return 0.0
    arr = to_minimisation(points, directions)
    ref = to_minimisation([reference], directions)[0]
    inside = arr[np.all(arr < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, ref))


def normalised(
    values: Mapping[str, float], baseline: Mapping[str, float], objectives: Sequence[str]
) -> tuple[float, ...]:
    """A trial's point in the unit box of the normalised hypervolume.

    Each objective is taken relative to the baseline's value (``ObjectiveSpec.normalised``: points of
    accuracy lost, or the fraction of the baseline's latency and size), divided by the objective's
    ``hv_edge`` and clipped to [0, 1]: 0 is as good as the baseline or better for accuracy and nothing
    at all for latency and size, 1 is the edge of the box (5 points lost, the baseline's own latency
    or size).
    """
    out = []
    for name in objectives:
        spec = OBJECTIVES[name]
        out.append(min(1.0, max(0.0, spec.normalised(values[name], baseline[name]) / spec.hv_edge)))
    return tuple(out)


def hypervolume_curve(
    points: Sequence[Mapping[str, float] | None], baseline: Mapping[str, float], objectives: Sequence[str]
) -> list[float]:
    """The normalised hypervolume after each trial, in [0, 1] and never decreasing: the one definition
    behind ``report.html`` and ``edgepareto bench search``.

    ``points`` holds each trial's objective values in trial order (validation split), None for a
    trial that adds no point (failed, pruned, running or infeasible); ``baseline`` holds the values of
    the uncompressed baseline the run compares with. The reference box is the unit box of
    :func:`normalised`, fixed by the baseline alone, so runs and samplers on the same task compare.
    """
    minimised = ["minimize"] * len(objectives)
    seen: list[tuple[float, ...]] = []
    curve = []
    for values in points:
        if values is not None:
            seen.append(normalised(values, baseline, objectives))
        curve.append(hypervolume(seen, minimised, [1.0] * len(objectives)) if seen else 0.0)
    return curve
