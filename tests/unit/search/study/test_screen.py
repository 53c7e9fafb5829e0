"""The structure-first screen's rules on known values: the accuracy ceiling, budgets, domination."""

from __future__ import annotations

import pytest

from search.study.screen import MARGIN_POINTS, accuracy_ceiling, dominated, over_budget

OBJ = ("accuracy", "latency", "size")


def test_the_ceiling_is_the_baselines_accuracy_plus_the_margin():
    assert accuracy_ceiling(0.9) == pytest.approx(0.9 + MARGIN_POINTS / 100)
    assert accuracy_ceiling(0.9, margin_points=2.0) == pytest.approx(0.92)
    assert accuracy_ceiling(None) is None


def test_a_budget_violation_names_the_objective_and_both_values():
    assert over_budget({"latency": 2.0, "size": 1.0}, {"latency": 1.5, "size": None}) == (
        "over the latency budget before fine-tuning: 2.000 ms > 1.500 ms"
    )
    size = over_budget({"latency": 1.0, "size": 3.0}, {"latency": 1.5, "size": 2.0})
    assert size is not None and size.startswith("over the size")
    assert over_budget({"latency": 1.0, "size": 1.0}, {"latency": 1.5, "size": None}) is None


def test_dominated_only_by_a_point_above_the_ceiling_and_no_slower_nor_larger():
    ceiling = accuracy_ceiling(0.95)  # 0.955
    candidate = {"latency": 1.0, "size": 2.0}
    fast_but_worse = {"accuracy": 0.95, "latency": 0.5, "size": 1.0}  # the candidate may still beat it
    better_everywhere = {"accuracy": 0.96, "latency": 0.9, "size": 2.0}
    slower = {"accuracy": 0.99, "latency": 1.1, "size": 1.0}
    assert dominated(candidate, ceiling, [fast_but_worse, slower], OBJ) is None
    assert dominated(candidate, ceiling, [fast_but_worse, slower, better_everywhere], OBJ) == 2
    same = {"accuracy": ceiling, "latency": 1.0, "size": 2.0}  # equal everywhere: not dominated
    assert dominated(candidate, ceiling, [same], OBJ) is None


def test_without_a_ceiling_or_with_an_objective_fine_tuning_changes_nothing_is_screened():
    front = [{"accuracy": 0.99, "latency": 0.1, "size": 0.1, "energy": 0.1}]
    assert dominated({"latency": 1.0, "size": 1.0}, None, front, OBJ) is None
    assert dominated({"latency": 1.0, "size": 1.0, "energy": 1.0}, 0.9, front, (*OBJ, "energy")) is None
    assert dominated({"latency": 1.0}, 0.9, front, ("accuracy", "latency")) == 0
