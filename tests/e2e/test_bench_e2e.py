"""The benchmarks that run whole searches: scaling over workers, and the service under load."""

import pandas as pd
import pytest

from tests.support.cli import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_bench_scaling_runs_one_and_two_workers_and_saves_them(tmp_path, capfd):
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


@pytest.mark.timeout(600)
def test_bench_service_measures_idle_and_busy_status_requests(tmp_path):
    from search.bench.service import bench_service, format_service

    tiny = {"model": "test_resnet", "img_size": 16, "epochs": 30, "trials": 50, "max_accuracy_drop": 50}
    table = bench_service(clients=5, bursts=2, runs_dir=str(tmp_path), log=lambda _m: None, search=tiny)
    assert list(table["phase"]) == ["idle", "busy"] and list(table["requests"]) == [10, 10]
    assert (table["p99"] >= table["p50"]).all() and (table["p50"] > 0).all()
    assert len(list((tmp_path / "bench").glob("service-*.csv"))) == 1
    assert "p99" in format_service(table)
