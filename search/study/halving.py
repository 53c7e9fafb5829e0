"""Multi-objective successive halving on fine-tuning epochs, pure: the rungs and the promotion rule.

MO-ASHA (Schmucker et al., 2021), asynchronous and in its stopping form: a candidate fine-tunes up to a
rung, its artifact is scored there, and it goes on to the next rung only if it ranks in the top
``1/eta`` of every candidate that has reached that rung so far (non-dominated sorting on accuracy at
the rung, latency and size, crowding distance breaking ties: ``search.front.pareto.nondominated_order``).
Nobody waits for a rung to fill, so the rule works the same for one process, for workers sharing a
PostgreSQL study and for Ray Tune trials: each reads its peers' rung values from the study.

A candidate ranked out at a rung trains no further, but it is not thrown away: each rung is a finished
short recovery (its own schedule), so its file is a deployable model with that many epochs, scored on
validation like any result and kept as the trial's (``RUNG_STOP_ATTR`` says why it went no further).
Only the candidates near the front earn the long recoveries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from search.front.pareto import nondominated_order

#: Each rung keeps the top 1/ETA of the candidates that reached it.
ETA = 3
#: Fine-tuning epochs at the first rung.
FIRST_RUNG = 1
#: The trial attribute holding its values at a rung (``rung:EPOCHS`` -> objective -> value); every
#: trial of the study that carries it is a peer at that rung.
RUNG_ATTR = "rung:{epochs}"
#: The trial attribute saying why a candidate stopped at a rung (its rung's model is its result).
RUNG_STOP_ATTR = "rung_stop"


def rungs(top: int, first: int = FIRST_RUNG, eta: int = ETA) -> tuple[int, ...]:
    """Cumulative fine-tuning epochs at each rung: ``first * eta**k`` below ``top``, then ``top`` (the
    full recovery budget). ``rungs(15) == (1, 3, 9, 15)``."""
    if top < 1 or first < 1 or eta < 2:
        raise ValueError(f"need top >= 1, first >= 1 and eta >= 2; got {top}, {first}, {eta}")
    out = []
    epochs = first
    while epochs < top:
        out.append(epochs)
        epochs *= eta
    return (*out, top)


def top_rung(space_epochs: int, training_epochs: int) -> int:
    """The full recovery budget: the baseline's own training length, at least the space's bound."""
    return max(space_epochs, training_epochs)


@dataclass(frozen=True)
class Verdict:
    """A candidate's place among the ``peers`` that reached the same rung (itself included)."""

    rank: int  # 1 = best
    peers: int
    keep: int  # how many of them go on

    @property
    def promoted(self) -> bool:
        return self.rank <= self.keep


def judge(
    point: Sequence[float], peers: Sequence[Sequence[float]], directions: Sequence[str], eta: int = ETA
) -> Verdict:
    """``point``'s verdict at a rung where ``peers`` (in the order they arrived) are already recorded,
    all in the objectives' order: promoted when it is among the first ``floor(n / eta)`` of the ``n``
    in NSGA-II order (ASHA's rule), so nothing goes on from a rung until ``eta`` candidates have
    reached it; the first ones stay the models they are at the rung. (The stopping variant's
    ``ceil`` let the first arrival at every rung go on unopposed: in 400-second searches the first
    few candidates took all 15 epochs each and the search ran 13 trials where ``off`` ran 29.)
    Ties (equal rank and crowding distance, e.g. the infinitely distant extremes of a small front)
    go to the peers that arrived first, never to the newcomer: in three objectives most points of a
    small front are an extreme in some objective, and favouring the newcomer promoted 22 of 41
    candidates at the first rung of a 60-trial digits search instead of about a third."""
    points = [*peers, point]
    order = nondominated_order(points, directions)
    n = len(points)
    return Verdict(rank=order.index(n - 1) + 1, peers=n, keep=n // eta)
