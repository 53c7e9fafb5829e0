"""Pareto maths on plain numbers: every objective is turned into minimisation first."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
