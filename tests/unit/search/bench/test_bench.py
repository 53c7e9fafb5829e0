"""The benchmarks: the hypervolume curve on plain numbers, and the ViT techniques table on a tiny ViT."""

import pandas as pd
import pytest

from search.bench.search import Curve, format_bench
from tests.support.cli import run_cli


def test_format_reports_trials_to_reach_random():
    curves = [Curve("tpe", 0, (0.1, 0.5, 0.6, 0.7)), Curve("random", 0, (0.1, 0.2, 0.4, 0.5))]
    text = format_bench(curves, 4)
    assert "random search's mean final hypervolume 0.5000: 2" in text


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
