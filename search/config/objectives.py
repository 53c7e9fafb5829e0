"""The objectives table: one row per objective a search can optimise, read by every part that names one.

A row says how the objective is optimised (direction), where its value lives (the trial attribute the
objective writes, the metric name in the Optuna study, the column in ``trials.csv`` and in
``pareto.csv``), how it is shown (unit and format) and how it is normalised for the hypervolume.
Adding an objective, such as peak RAM or energy, is one new row here plus the code that measures it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective. Values are in the units of ``unit``; accuracy is a fraction in [0, 1]."""

    name: str
    direction: str  # "maximize" or "minimize"
    attr: str  # the trial's user attribute (and the ``Metrics`` field) holding the value
    study_metric: str  # the objective's name in the Optuna study (optuna-dashboard's axis)
    trial_column: str  # trials.csv: validation split
    pareto_column: str  # pareto.csv: test split for accuracy, re-measured latency
    unit: str  # shown after the value, with a space ("" for none)
    fmt: str  # format of the bare value
    #: Normalised hypervolume (``search.front.pareto.normalised``): the value relative to the
    #: baseline's, as points of drop ("drop") or as a ratio ("ratio"), and the edge of the box.
    relative: str
    hv_edge: float

    def format(self, value: float) -> str:
        """``0.9812``, ``0.532 ms``, ``1.20 MB``."""
        return self.fmt.format(value) + (f" {self.unit}" if self.unit else "")

    def normalised(self, value: float, baseline: float) -> float:
        """The value relative to the baseline's, as minimisation: points of accuracy lost (``drop``)
        or the fraction of the baseline's latency or size (``ratio``)."""
        if self.relative == "drop":
            sign = 1.0 if self.direction == "maximize" else -1.0
            return (baseline - value) * 100 * sign
        return value / baseline


#: name -> row. Accuracy's hypervolume edge is 5 points of drop (the default --max-accuracy-drop);
#: latency and size count up to the baseline's own (a slower or larger model adds nothing).
OBJECTIVES: Mapping[str, ObjectiveSpec] = {
    spec.name: spec
    for spec in (
        ObjectiveSpec("accuracy", "maximize", "accuracy", "val_accuracy", "val_accuracy", "test_accuracy",
                      "", "{:.4f}", "drop", 5.0),
        ObjectiveSpec("latency", "minimize", "latency_ms", "latency_ms", "latency_ms", "latency_ms",
                      "ms", "{:.3f}", "ratio", 1.0),
        ObjectiveSpec("size", "minimize", "size_mb", "size_mb", "size_mb", "size_mb",
                      "MB", "{:.2f}", "ratio", 1.0),
    )
}
DEFAULT_OBJECTIVES = tuple(OBJECTIVES)


def objective(name: str) -> ObjectiveSpec:
    """The row of ``name``; a ``KeyError`` for an unknown one (configs validate names first)."""
    return OBJECTIVES[name]


def directions(names: tuple[str, ...] | list[str]) -> list[str]:
    """Optuna's directions for the objectives ``names``, in order."""
    return [OBJECTIVES[n].direction for n in names]
