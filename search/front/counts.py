"""Trial counts that add up, from plain rows: the same numbers for ``show``, the service and the report.

A trial cut short by an interruption (a kill, a stale heartbeat) is FAIL in Optuna but does not count
towards ``--trials``: its parameters run again. So ``complete + failed + pruned + left == budget``,
where ``left`` is the places still open, and ``interrupted`` is reported beside the sum, not in it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

#: How many distinct failure reasons a count keeps (the rest are summed under "other").
TOP_REASONS = 10


@dataclass(frozen=True)
class TrialRow:
    """What counting needs of one trial: its state name and, for a FAIL, why and whether it counts."""

    state: str
    interrupted: bool = False
    reason: str = ""


@dataclass(frozen=True)
class TrialCounts:
    """Trials of a run against its budget (``--trials``)."""

    budget: int
    complete: int = 0
    failed: int = 0  # counted failures: the candidate itself failed
    pruned: int = 0
    running: int = 0
    waiting: int = 0  # enqueued, not started (baselines, recipes, re-queued trials)
    interrupted: int = 0  # cut short and run again; not counted
    failed_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def counted(self) -> int:
        """Trials that took a place of the budget."""
        return self.complete + self.failed + self.pruned

    @property
    def left(self) -> int:
        """Places still open (running and waiting trials take some of them)."""
        return max(self.budget - self.counted, 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counted": self.counted, "left": self.left}

    def describe(self) -> str:
        """One line, e.g. ``12/20 counted: 10 complete, 1 failed, 1 pruned; 1 running, 0 waiting``."""
        text = (
            f"{self.counted}/{self.budget} counted: {self.complete} complete, {self.failed} failed, "
            f"{self.pruned} pruned; {self.running} running, {self.waiting} waiting"
        )
        if self.interrupted:
            text += f"; {self.interrupted} interrupted (run again, not counted)"
        return text


def frozen_row(trial: Any) -> TrialRow:
    """What counting needs of an Optuna trial (a ``FrozenTrial``, read only by its attributes)."""
    a = trial.user_attrs
    return TrialRow(trial.state.name, bool(a.get("interrupted")), str(a.get("fail_reason", "")))


def count_trials(rows: Iterable[TrialRow], budget: int) -> TrialCounts:
    """Count trial rows against ``budget``; failures grouped by reason (its text before a colon)."""
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    interrupted = 0
    for row in rows:
        if row.state == "FAIL" and row.interrupted:
            interrupted += 1
            continue
        states[row.state] += 1
        if row.state == "FAIL":
            reasons[(row.reason or "unknown").split(":", 1)[0].strip()[:80] or "unknown"] += 1
    top = dict(reasons.most_common(TOP_REASONS))
    if sum(top.values()) < sum(reasons.values()):
        top["other"] = sum(reasons.values()) - sum(top.values())
    return TrialCounts(
        budget=budget, complete=states["COMPLETE"], failed=states["FAIL"], pruned=states["PRUNED"],
        running=states["RUNNING"], waiting=states["WAITING"], interrupted=interrupted,
        failed_by_reason=top,
    )


def frame_counts(trials: pd.DataFrame, budget: int) -> TrialCounts:
    """Counts from a ``trials.csv`` table (one written before the ``interrupted`` column existed
    tells an interruption by its reason)."""
    reasons = trials.get("fail_reason", pd.Series([""] * len(trials), index=trials.index)).fillna("")
    cut = trials.get("interrupted", reasons.astype(str).str.startswith("interrupted"))
    rows = [
        TrialRow(str(state), bool(flag), str(reason))
        for state, flag, reason in zip(trials["state"], cut.fillna(False), reasons)
    ]
    return count_trials(rows, budget)
