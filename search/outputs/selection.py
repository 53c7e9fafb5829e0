"""Automatic model selection: the Pareto model that fits a budget, or the closest when none does.

Pure functions over the run's ``pareto.csv`` table (test-split accuracy of the exported file, latency
re-measured side by side on the run's target, file size), shared by ``edgepareto select``, the Python
API (``load_run(path).select(...)``) and the service.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from search.config.objectives import OBJECTIVES
from search.core.cells import plain_record
from search.core.errors import UserError


def preference(first: str) -> tuple[tuple[str, bool], ...]:
    """What ``--prefer first`` optimises first, then the tie-breaks in the objectives table's order:
    (pareto.csv column, ascending). A ``UserError`` for a name that is not an objective."""
    if first not in OBJECTIVES:
        raise UserError(f"--prefer must be one of {', '.join(OBJECTIVES)}, got {first!r}", field="prefer")
    return tuple(
        (OBJECTIVES[n].pareto_column, OBJECTIVES[n].direction == "minimize")
        for n in (first, *(o for o in OBJECTIVES if o != first))
    )


@dataclass(frozen=True)
class Budget:
    """Limits a chosen model must meet; ``None`` leaves a limit out. Accuracy is a fraction."""

    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    min_accuracy: float | None = None

    def __post_init__(self) -> None:
        for key in ("max_latency_ms", "max_size_mb"):
            value = getattr(self, key)
            if value is not None and not (_number(value) and value > 0):
                flag = key.replace("_", "-")
                raise UserError(f"--{flag} must be a positive number, got {value!r}", field=key)
        if self.min_accuracy is not None and not (_number(self.min_accuracy) and 0 <= self.min_accuracy <= 1):
            raise UserError(
                f"--min-accuracy is a fraction in [0, 1], e.g. 0.97, got {self.min_accuracy!r}",
                field="min_accuracy",
            )

    def shortfalls(self, row: Mapping[str, Any]) -> dict[str, float]:
        """How far ``row`` misses each limit, relative to the limit (0.1: 10% over); empty if it fits."""
        out = {}
        if self.max_latency_ms is not None and row["latency_ms"] > self.max_latency_ms:
            out["max_latency_ms"] = row["latency_ms"] / self.max_latency_ms - 1
        if self.max_size_mb is not None and row["size_mb"] > self.max_size_mb:
            out["max_size_mb"] = row["size_mb"] / self.max_size_mb - 1
        if self.min_accuracy is not None and row["test_accuracy"] < self.min_accuracy:
            out["min_accuracy"] = 1 - row["test_accuracy"] / self.min_accuracy if self.min_accuracy else 0.0
        return out

    def certainty(self, row: Mapping[str, Any]) -> str | None:
        """How surely ``row`` meets the latency limit: ``measured`` (its latency is a measurement),
        ``sure`` (predicted, and the upper end of its interval is within the limit), ``estimate``
        (only its point estimate is within); None without a latency limit or when it misses it."""
        if self.max_latency_ms is None or row["latency_ms"] > self.max_latency_ms:
            return None
        if not str(row.get("latency_source") or "measured").startswith("predicted"):
            return "measured"
        high = row.get("latency_high_ms")
        return "sure" if _number(high) and high <= self.max_latency_ms else "estimate"

    def describe(self) -> str:
        parts = []
        if self.max_latency_ms is not None:
            parts.append(f"latency <= {self.max_latency_ms:g} ms")
        if self.max_size_mb is not None:
            parts.append(f"size <= {self.max_size_mb:g} MB")
        if self.min_accuracy is not None:
            parts.append(f"accuracy >= {self.min_accuracy * 100:g}%")
        return ", ".join(parts) or "no limits"


@dataclass(frozen=True)
class Selection:
    """The answer: the chosen model (``fits``) or, when nothing fits, the closest one and its misses."""

    fits: bool
    model: dict[str, Any]
    budget: Budget
    prefer: str
    shortfalls: dict[str, float]
    candidates: int  # Pareto models that met the budget
    #: How surely the chosen model meets the latency limit (``Budget.certainty``).
    certainty: str | None = None
    #: When the chosen model fits only by its point estimate: the best one that fits for sure.
    sure_alternative: dict[str, Any] | None = None

    @property
    def trial(self) -> int:
        return int(self.model["trial"])

    def message(self) -> str:
        m = self.model
        what = (
            f"trial {self.trial} ({m['techniques']}): test accuracy {m['test_accuracy'] * 100:.2f}%, "
            f"latency {m['latency_ms']:.3f} ms ({m.get('latency_source', 'measured')}), "
            f"size {m['size_mb']:.3f} MB"
        )
        if self.fits:
            chosen = f"chosen for {self.budget.describe()} (best {self.prefer}, {self.candidates} fit)"
            return f"{chosen}: {what}{self._certainty_note()}"
        misses = ", ".join(f"{_LABELS[k]} {v * 100:.1f}% off" for k, v in self.shortfalls.items())
        return f"no Pareto model fits {self.budget.describe()}; closest is {what} ({misses})"

    def _certainty_note(self) -> str:
        limit = self.budget.max_latency_ms
        high = self.model.get("latency_high_ms")
        if self.certainty == "sure":
            return (f"; fits for sure: the upper end of its predicted interval, {high:.3f} ms, is within "
                    f"{limit:g} ms")
        if self.certainty != "estimate":
            return ""
        bound = f"up to {high:.3f} ms" if _number(high) else "of unknown spread"
        note = (f"; fits only by its point estimate: its predicted interval reaches {bound}, over {limit:g} "
                "ms (measure it with --agent to be sure)")
        alt = self.sure_alternative
        if alt is not None:
            worst = alt.get("latency_high_ms") if _number(alt.get("latency_high_ms")) else alt["latency_ms"]
            note += (f"; the best model that fits for sure is trial {int(alt['trial'])} "
                     f"({alt['test_accuracy'] * 100:.2f}%, up to {worst:.3f} ms)")
        return note

    def to_dict(self) -> dict[str, Any]:
        return {
            "fits": self.fits, "certainty": self.certainty, "prefer": self.prefer,
            "sure_alternative": None if self.sure_alternative is None
            else int(self.sure_alternative["trial"]),
            "budget": self.budget.describe(),
            "limits": {k: v for k, v in vars(self.budget).items() if v is not None},
            "candidates": self.candidates, "shortfalls": self.shortfalls, "model": self.model,
        }


_LABELS = {"max_latency_ms": "latency", "max_size_mb": "size", "min_accuracy": "accuracy"}


def select(pareto: pd.DataFrame, budget: Budget, prefer: str = "accuracy") -> Selection:
    """The best model of ``pareto`` by ``prefer`` among those within ``budget``; ties go to the next
    criteria of :func:`preference`, then to the lower trial number. When none fits, the model with the
    smallest summed relative shortfall (ties by the same order)."""
    criteria = preference(prefer)
    if pareto.empty:
        raise UserError("the run has no Pareto models to select from")
    order = [c for c, _ in criteria] + ["trial"]
    ranked = pareto.sort_values(order, ascending=[a for _, a in criteria] + [True], kind="stable")
    rows = [plain_record(r) for r in ranked.to_dict(orient="records")]
    fitting = [r for r in rows if not budget.shortfalls(r)]
    if fitting:
        certainty = budget.certainty(fitting[0])
        sure = [r for r in fitting if budget.certainty(r) in ("sure", "measured")]
        alternative = sure[0] if certainty == "estimate" and sure else None
        return Selection(True, fitting[0], budget, prefer, {}, len(fitting), certainty, alternative)
    closest = min(rows, key=lambda r: sum(budget.shortfalls(r).values()))  # min keeps the first of ties
    return Selection(False, closest, budget, prefer, budget.shortfalls(closest), 0)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
