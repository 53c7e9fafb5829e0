"""The Pareto front and hypervolume, on plain numbers."""

import pytest

from search.front.pareto import hypervolume, hypervolume_curve, pareto_front


def test_front_two_objectives_max_and_min():
    # (accuracy max, latency min)
    points = [(0.99, 10.0), (0.98, 5.0), (0.97, 6.0), (0.90, 1.0), (0.99, 12.0)]
    assert pareto_front(points, ["maximize", "minimize"]) == [0, 1, 3]


def test_front_keeps_equal_points_and_handles_empty_and_single():
    assert pareto_front([(1.0, 1.0), (1.0, 1.0), (2.0, 2.0)], ["minimize", "minimize"]) == [0, 1]
    assert pareto_front([], ["minimize"]) == []
    assert pareto_front([(3.0,)], ["maximize"]) == [0]


def test_front_three_objectives():
    points = [(0.9, 1.0, 10.0), (0.9, 1.0, 5.0), (0.8, 0.5, 20.0), (0.95, 2.0, 30.0)]
    assert pareto_front(points, ["maximize", "minimize", "minimize"]) == [1, 2, 3]


def test_front_rejects_bad_direction():
    with pytest.raises(ValueError):
        pareto_front([(1.0,)], ["up"])


def test_hypervolume_known_values():
    # minimisation, reference (4, 4): two boxes 3x1 and 1x3 overlapping 1x1 -> 5
    assert hypervolume([(1, 3), (3, 1)], ["minimize", "minimize"], (4, 4)) == pytest.approx(5.0)
    # maximised accuracy: accuracy 0.9 vs reference 0.5, latency 1 vs reference 3 -> 0.4 * 2
    assert hypervolume([(0.9, 1.0)], ["maximize", "minimize"], (0.5, 3.0)) == pytest.approx(0.8)
    # points outside the reference box add nothing
    assert hypervolume([(5, 5)], ["minimize", "minimize"], (4, 4)) == 0.0
    assert hypervolume([], ["minimize"], (1,)) == 0.0


def test_hv_curve_is_monotone_and_ignores_failed_trials():
    """The normalised hypervolume curve (report and ``bench search``): relative to the baseline,
    accuracy drop over a 5-point edge, latency and size as fractions of the baseline's."""
    baseline = {"accuracy": 0.90, "latency": 2.0, "size": 4.0}
    points = [
        baseline,  # the baseline itself dominates nothing inside the box
        None,  # failed or infeasible: adds nothing
        {"accuracy": 0.89, "latency": 1.0, "size": 2.0},  # 1 point lost, half the latency and size
        {"accuracy": 0.86, "latency": 0.2, "size": 0.4},
        None,
    ]
    curve = hypervolume_curve(points, baseline, ("accuracy", "latency", "size"))
    assert curve[0] == 0.0 and curve[1] == 0.0
    assert curve[2] == pytest.approx((1 - 1 / 5) * 0.5 * 0.5)
    assert list(curve) == sorted(curve) and curve[-1] == curve[-2]
