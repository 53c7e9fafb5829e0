"""The benchmarks: the hypervolume curve on plain numbers, and the ViT techniques table on a tiny ViT."""

import pytest

from search.bench.search import Curve, format_bench, hv_curve


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


def test_bench_predictor_scores_held_out_models_and_saves_them(tmp_path, capfd):
    import pandas as pd

    from tests.conftest import run_cli

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


def test_bench_scaling_runs_one_and_two_workers_and_saves_them(tmp_path, capfd):
    import pandas as pd

    from tests.conftest import run_cli

    code, out, err = run_cli(
        ["bench", "scaling", "--setups", "optuna-1,optuna-2", "--trials", "4", "--model", "test_resnet",
         "--img-size", "16", "--epochs", "1", "--runs-dir", str(tmp_path)], capfd,
    )
    assert code == 0, err
    assert "optuna-1" in out and "optuna-2" in out and "2 workers vs 1:" in out
    (saved,) = (tmp_path / "bench").glob("scaling-*.csv")
    table = pd.read_csv(saved)
    assert list(table["setup"]) == ["optuna-1", "optuna-2"] and (table["per_hour"] > 0).all()
    code, _, err = run_cli(["bench", "scaling", "--setups", "dask-8"], capfd)
    assert code == 2 and "unknown setup(s) dask-8" in err


def test_bench_service_measures_idle_and_busy_status_requests(tmp_path):
    from search.bench.service import bench_service, format_service

    tiny = {"model": "test_resnet", "img_size": 16, "epochs": 30, "trials": 50, "max_accuracy_drop": 50}
    table = bench_service(clients=5, bursts=2, runs_dir=str(tmp_path), log=lambda _m: None, search=tiny)
    assert list(table["phase"]) == ["idle", "busy"] and list(table["requests"]) == [10, 10]
    assert (table["p99"] >= table["p50"]).all() and (table["p50"] > 0).all()
    assert len(list((tmp_path / "bench").glob("service-*.csv"))) == 1
    assert "p99" in format_service(table)
