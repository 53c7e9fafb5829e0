"""The benchmarks: the hypervolume curve on plain numbers, and the ViT techniques table on a tiny ViT."""

import datetime as dt

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState, create_trial

from search.bench.search import Curve, TimedCurve, format_bench, format_fidelity, timed_hv
from search.study.cluster import BASELINE_ATTR
from tests.support.cli import run_cli


def test_format_reports_trials_to_reach_random():
    curves = [Curve("tpe", 0, (0.1, 0.5, 0.6, 0.7)), Curve("random", 0, (0.1, 0.2, 0.4, 0.5))]
    text = format_bench(curves, 4)
    assert "random search's mean final hypervolume 0.5000: 2" in text


T0 = dt.datetime(2026, 12, 1, 12, 0, 0)


def finished(start_s: float, end_s: float, accuracy: float | None, latency: float = 0.5, size: float = 0.5,
             baseline: bool = False) -> optuna.trial.FrozenTrial:
    """A trial that ran from ``start_s`` to ``end_s``; PRUNED when ``accuracy`` is None."""
    attrs = {BASELINE_ATTR: True} if baseline else {}
    if accuracy is not None:
        attrs.update(accuracy=accuracy, latency_ms=latency, size_mb=size)
    trial = create_trial(
        state=TrialState.COMPLETE if accuracy is not None else TrialState.PRUNED,
        values=None if accuracy is None else [accuracy, latency, size], user_attrs=attrs,
    )
    trial.datetime_start = T0 + dt.timedelta(seconds=start_s)
    trial.datetime_complete = T0 + dt.timedelta(seconds=end_s)
    return trial


def test_timed_hypervolume_follows_the_finishing_order():
    trials = [
        finished(0, 10, 0.99, latency=1.0, size=1.0, baseline=True),
        finished(10, 50, 0.99, latency=0.5, size=0.5),  # half the latency and size, nothing lost
        finished(12, 20, None),  # pruned: finishes first, adds nothing
    ]
    seconds, hv = timed_hv(trials)
    assert seconds == (10.0, 20.0, 50.0)
    assert hv == pytest.approx((0.0, 0.0, 0.25))  # the box's corner 0.5 x 0.5, the whole accuracy edge
    curve = TimedCurve("halving", 0, seconds, hv)
    assert curve.at(49) == 0.0 and curve.at(50) == pytest.approx(0.25) and curve.reaches(0.2) == 50.0
    assert curve.reaches(0.3) is None


def test_format_fidelity_reports_seconds_to_reach_off():
    curves = [
        TimedCurve("off", 0, (10.0, 90.0), (0.1, 0.5), complete=2),
        TimedCurve("halving", 0, (10.0, 40.0, 80.0), (0.1, 0.5, 0.6), complete=2, pruned=1),
        TimedCurve("off", 1, (10.0, 95.0), (0.2, 0.4), complete=2),
        TimedCurve("halving", 1, (70.0,), (0.45,), complete=1),
    ]
    text = format_fidelity(curves, 100)
    reach = "halving: seconds to reach off's final hypervolume of the same seed: 40, 70 (1 of 2 within 50 s)"
    assert reach in text
    assert "mean at 50 s 0.2500 vs off's mean final 0.4500" in text
    assert "2 (0)/1 1 (0)/0" in text


@pytest.mark.slow  # measures the latency of every setting: tens of seconds on 2 cores
def test_bench_techniques_measures_every_vit_setting_side_by_side():
    from search.bench.techniques import VIT_SETTINGS, bench_techniques, format_techniques

    table = bench_techniques("test_vit", img_size=16, repeats=5)
    assert list(table["setting"]) == list(VIT_SETTINGS)
    rows = table.set_index("setting")
    base = rows.loc["baseline (fp32)"]
    assert base["speedup"] == 1.0 and (table["latency_ms"] > 0).all()
    for name in ("heads 2/3 + MLP 75%", "embedding 25%", "tokens 25%/block from the start"):
        assert rows.loc[name, "macs_m"] < base["macs_m"], name
    assert rows.loc["heads 2/3 + MLP 75%", "params_m"] < base["params_m"]
    assert rows.loc["int8 dynamic, MatMul only", "size_mb"] < 0.5 * base["size_mb"]
    assert "speedup" in format_techniques(table)


@pytest.mark.slow  # measures 18 models and fits every predictor: minutes on 2 cores
@pytest.mark.timeout(600)
def test_bench_predictor_scores_held_out_models_and_saves_them(tmp_path, capfd):
    code, out, err = run_cli(
        ["bench", "predictor", "--model", "test_resnet,test_vit", "--img-size", "16", "--train", "12",
         "--held-out", "6", "--runs-dir", str(tmp_path)], capfd,
    )
    assert code == 0, err
    for name in ("flops", "prior", "kernels", "kernels+trees", "held-out mix: CNN"):
        assert name in out
    (saved,) = (tmp_path / "bench").glob("predictor-*.csv")
    frame = pd.read_csv(saved)
    assert (frame["split"] == "held-out").sum() == 6 and (frame["measured_ms"] > 0).all()
    assert set(frame["model"]) == {"test_resnet", "test_vit"}
