"""The benchmark's hypervolume curve, on plain numbers."""

import pytest

from search.bench import Curve, format_bench, hv_curve


def test_hv_curve_is_monotone_and_ignores_failed_trials():
    points = [(0.0, 1.0, 1.0), None, (1.0, 0.5, 0.5), (4.0, 0.1, 0.1), None]
    curve = hv_curve(points)
    assert curve[0] == 0.0  # the baseline itself dominates nothing inside the reference box
    assert curve[1] == 0.0
    assert curve[2] == pytest.approx((5 - 1) * 0.5 * 0.5 / 5)
    assert list(curve) == sorted(curve) and curve[-1] == curve[-2]


def test_format_reports_trials_to_reach_random():
    curves = [Curve("tpe", 0, (0.1, 0.5, 0.6, 0.7)), Curve("random", 0, (0.1, 0.2, 0.4, 0.5))]
    text = format_bench(curves, 4)
    assert "random search's mean final hypervolume 0.5000: 2" in text
