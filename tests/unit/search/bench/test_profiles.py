"""``edgepareto bench profiles``: the published table is well formed and covers every shipped profile;
the prior-vs-published arithmetic by hand on a one-node graph."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from search.bench.profiles import (
    LOCAL_MODELS,
    NO_PUBLISHED,
    PUBLISHED_CSV,
    REQUIRED_COLUMNS,
    at_clock,
    compare,
    format_profiles,
    graph_costs,
    load_published,
    rate_factor,
    summarize,
)
from search.core.errors import UserError
from targets.graph import analyze
from targets.profile import shipped_profiles


def test_published_table_has_the_columns_positive_latencies_and_a_source_on_every_row():
    table = load_published()
    assert set(REQUIRED_COLUMNS) <= set(table.columns)
    assert (table["latency_ms"] > 0).all() and (table["threads"] >= 1).all()
    assert table["source"].map(lambda s: isinstance(s, str) and bool(s.strip())).all()
    assert set(table["precision"]) <= {"fp32", "fp16", "int8"}


def test_every_shipped_profile_has_published_rows_or_says_why_not():
    covered = set(load_published()["profile"])
    excused = {name: reason for name, reason in NO_PUBLISHED}
    assert all(reason.strip() for reason in excused.values())
    for name in shipped_profiles():
        assert name in covered or name in excused, name
    assert covered <= set(shipped_profiles())


def test_a_bad_row_is_a_user_error_naming_its_line(tmp_path):
    table = pd.read_csv(PUBLISHED_CSV)
    table.loc[2, "latency_ms"] = -1.0
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    with pytest.raises(UserError, match="row 4: latency_ms must be positive"):
        load_published(path)
    table.drop(columns=["source"]).to_csv(path, index=False)
    with pytest.raises(UserError, match="missing column"):
        load_published(path)


def gemm_cost(k: int = 500, n: int = 1000):
    """One Gemm: ``k * n`` MACs at batch 1."""
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    inits = [numpy_helper.from_array(np.zeros((n, k), np.float32), "w"),
             numpy_helper.from_array(np.zeros(n, np.float32), "b")]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )
    return analyze(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def row(precision: str = "fp32", threads: int = 1, clock_hz: float = math.nan, ms: float = 1.0) -> dict:
    return {"profile": "board", "timm_name": "gemm", "input_px": 1, "num_classes": 1, "board": "b",
            "model": "m", "precision": precision, "runtime": "r", "threads": threads,
            "clock_hz": clock_hz, "latency_ms": ms, "source": "s", "note": ""}


def test_prior_against_published_by_hand():
    cost = gemm_cost()
    macs = 500 * 1000
    # memory made free so that the prior is the compute term plus the per-op overhead
    board = replace(shipped_profiles()["rpi5"], memory_bandwidth_bytes_per_s=1e18)
    published = pd.DataFrame([
        row("fp32", ms=0.05), row("int8", ms=0.05), row("fp16", threads=2, ms=0.01),
        row("fp32", clock_hz=1.2e9, ms=0.1),
    ])
    out = compare(published, {("gemm", 1, 1): cost}, {"board": board})
    overhead = 4e-6
    expected = [
        macs / 19.2e9 + overhead,                # fp32 rate, one core
        macs / 76.8e9 + overhead,                # int8 rate on the MAC node
        macs / (38.4e9 * 2) + overhead,          # fp16 rate, two cores
        macs / 9.6e9 + overhead * 2,             # half the clock: half the rate, twice the overhead
    ]
    assert out["prior_ms"].tolist() == pytest.approx([s * 1e3 for s in expected])
    assert out["ratio"].tolist() == pytest.approx(
        [p / m for p, m in zip(out["prior_ms"], published["latency_ms"])])
    assert (out["compute_share"] == 1.0).all()
    slow_memory = replace(board, memory_bandwidth_bytes_per_s=1.0)
    assert compare(published[:1], {("gemm", 1, 1): cost}, {"board": slow_memory})["compute_share"][0] == 0.0
    assert at_clock(board, None) is board and at_clock(board, 2.4e9).macs_per_s["float16"] == 38.4e9


def test_summary_and_recalibration_factor_on_plain_numbers():
    comparison = pd.DataFrame({
        "profile": ["a", "a", "a", "b"], "precision": ["fp32", "fp32", "int8", "fp32"],
        "ratio": [0.5, 1.0, 2.0, 0.25], "compute_share": [0.9, 0.2, 0.8, 1.0], "threads": [1, 1, 1, 4],
    })
    summary = summarize(comparison).set_index("profile")
    assert summary.loc["a", "rows"] == 3 and summary.loc["a", "median_ratio"] == 1.0
    assert summary.loc["a", "gmean_ratio"] == pytest.approx(1.0)
    assert summary.loc["a", "mape_pct"] == pytest.approx(50.0)
    assert summary.loc["a", "within_25_pct"] == pytest.approx(100 / 3)
    assert summary.loc["a", "within_50_pct"] == pytest.approx(200 / 3)
    assert rate_factor(comparison, "a", ["fp32", "int8"]) == (pytest.approx(1.0), 2)  # 0.2 share left out
    assert rate_factor(comparison, "a", ["fp32"]) == (pytest.approx(0.5), 1)
    assert math.isnan(rate_factor(comparison, "c", ["fp32"])[0])
    assert rate_factor(comparison, "b", ["fp32"])[1] == 0  # single-thread rows only, by default
    assert rate_factor(comparison, "b", ["fp32"], threads=None) == (pytest.approx(0.25), 1)
    text = format_profiles(pd.DataFrame([{
        "profile": "a", "model": "m", "px": 8, "precision": "fp32", "runtime": "r", "threads": 1,
        "published_ms": 2.0, "prior_ms": 1.0, "ratio": 0.5, "compute_share": 0.9,
    }]), summary.reset_index())
    assert "published ms" in text and "MAPE %" in text and "0.50" in text


def test_mlperf_tiny_models_build_export_once_and_analyse(tmp_path):
    resnet8 = LOCAL_MODELS["mlperf_tiny_resnet8"](10).eval()
    assert resnet8(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    vww = LOCAL_MODELS["mlperf_tiny_mobilenet_v1_025"](2).eval()
    assert vww(torch.randn(1, 3, 96, 96)).shape == (1, 2)
    costs = graph_costs([("mlperf_tiny_resnet8", 32, 10)] * 2, tmp_path)
    (path,) = tmp_path.glob("*.onnx")
    stamp = path.stat().st_mtime_ns
    assert costs[("mlperf_tiny_resnet8", 32, 10)].macs > 0
    graph_costs([("mlperf_tiny_resnet8", 32, 10)], tmp_path)
    assert path.stat().st_mtime_ns == stamp  # reused, not exported again


@pytest.mark.slow
def test_the_analytic_priors_interval_is_the_published_tables(tmp_path):
    """``PRIOR_INTERVAL``, the interval every analytic prediction carries, is the split-conformal
    interval of the published rows against the prior with the shipped constants: change a profile
    or the table, and this says the interval must be measured again."""
    from search.bench.profiles import bench_profiles
    from targets.predictor import conformal
    from targets.profile import PRIOR_INTERVAL

    comparison, _ = bench_profiles(cache_dir=tmp_path)
    got = conformal(comparison["prior_ms"].to_numpy(), comparison["published_ms"].to_numpy())
    assert got == pytest.approx(list(PRIOR_INTERVAL), abs=0.005)


def test_thread_speedup_exponent_from_one_and_n_thread_pairs():
    """Pairs of the same model, runtime and precision at 1 and n threads give log(t1/tn)/log(n);
    the prior divides compute by n ** exponent."""
    from search.bench.profiles import thread_exponents
    from targets.profile import node_seconds

    base = {"profile": "board", "board": "b", "runtime": "r", "input_px": 224, "precision": "fp32"}
    table = pd.DataFrame([
        {**base, "timm_name": "m1", "threads": 1, "latency_ms": 100.0},
        {**base, "timm_name": "m1", "threads": 4, "latency_ms": 50.0},  # 2x on 4 threads: 0.5
        {**base, "timm_name": "m2", "threads": 1, "latency_ms": 90.0},
        {**base, "timm_name": "m2", "threads": 4, "latency_ms": 90.0 / 4 ** 0.7},
        {**base, "timm_name": "m3", "threads": 4, "latency_ms": 10.0},  # no 1-thread row: no pair
    ])
    got = thread_exponents(table).set_index("profile").loc["board"]
    assert got["pairs"] == 2 and got["exponent"] == pytest.approx(0.6)
    board = replace(shipped_profiles()["rpi5"], memory_bandwidth_bytes_per_s=1e18, per_op_overhead_s=0.0)
    cost = gemm_cost()
    node = next(n for n in cost.nodes if n.macs)
    linear = node_seconds(node, board, 4, False)
    half = node_seconds(node, replace(board, thread_speedup_exponent=0.5), 4, False)
    assert half == pytest.approx(linear * 2)  # 4 threads: 2x instead of 4x
    assert shipped_profiles()["rpi4"].thread_speedup_exponent == pytest.approx(0.40)
