"""The calibrated predictor, deployability, and how a target name and --latency become a plan."""

import json
from dataclasses import replace

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from search.core.errors import UserError
from targets.deploy import deployability
from targets.graph import analyze
from targets.latency import CalibratedTarget, latest_calibration, plan_latency
from targets.predictor import (
    FEATURES,
    STORABLE,
    Calibration,
    boosted_params,
    cross_validate,
    features,
    fit_calibration,
    kernel_params,
    predict_params,
    score,
)
from targets.profile import shipped_profiles


def conv_net(channels: int = 8, size: int = 8, op: str = "Relu"):
    """Conv 3x3 -> depthwise 3x3 -> ``op`` -> global pool -> flatten -> MatMul, by hand."""
    c = channels
    w = lambda name, shape: numpy_helper.from_array(np.ones(shape, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1], group=c),
        helper.make_node(op, ["b"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w("w1", (c, 3, 3, 3)), w("w2", (c, 1, 3, 3)), w("w3", (c, 10))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def feature(x: np.ndarray, name: str) -> float:
    return float(x[FEATURES.index(name)])


def test_features_split_nodes_into_kernel_classes():
    x = features(analyze(conv_net()))
    assert feature(x, "conv.fp32.work") == pytest.approx(8 * 8 * 8 * 3 * 9 / 1e6)
    assert feature(x, "dwconv.fp32.work") == pytest.approx(8 * 8 * 8 * 9 / 1e6)
    assert feature(x, "matmul.fp32.work") == pytest.approx(8 * 10 / 1e6)
    assert feature(x, "conv.fp32.nodes") == 1 and feature(x, "dwconv.fp32.nodes") == 1
    assert feature(x, "elementwise.fp32.nodes") == 1  # Relu
    assert feature(x, "norm.fp32.nodes") == 1 and feature(x, "move.fp32.nodes") == 1
    assert feature(x, "conv.fp32.bytes") == pytest.approx((8 * 3 * 9 + 8 * 64) * 4 / 1e6)


def synthetic(n: int, seed: int):
    """Graph-like features and latencies from known per-class costs, with 2% measurement noise."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, len(FEATURES)))
    for name in ("conv.fp32.work", "matmul.int8.work", "conv.fp32.nodes", "elementwise.fp32.nodes"):
        x[:, FEATURES.index(name)] = rng.uniform(1, 50, n)
    true = np.zeros(len(FEATURES))
    true[FEATURES.index("conv.fp32.work")] = 2e-4  # s per MMAC
    true[FEATURES.index("matmul.int8.work")] = 5e-5  # int8 four times cheaper per MAC
    true[FEATURES.index("conv.fp32.nodes")] = 2e-5
    true[FEATURES.index("elementwise.fp32.nodes")] = 3e-6
    y = (x @ true + 1e-5) * rng.normal(1, 0.02, n)
    return x, y


def test_kernel_model_recovers_per_class_costs_and_beats_flops():
    x, y = synthetic(120, 0)
    prior = x[:, FEATURES.index("conv.fp32.work")] * 1e-4
    cv = cross_validate(x, prior, y)
    assert cv["kernels"].within >= 0.95 and cv["kernels"].mape < 4
    assert cv["flops"].within < cv["kernels"].within  # one rate per MAC cannot tell int8 from fp32
    x2, y2 = synthetic(40, 1)
    held_out = score(predict_params(kernel_params(x, y), x2), y2)
    assert held_out.within >= 0.95


def test_calibration_round_trip(tmp_path):
    x, y = synthetic(60, 0)
    calibration = fit_calibration(
        x, x[:, 0], y, target="host", threads=1, created="now", device="test", folds=5
    )
    assert set(calibration.cv) == {"flops", "prior", "kernels", "kernels+trees"}
    best = max(STORABLE, key=lambda m: (calibration.cv[m]["within"], -calibration.cv[m]["mape"]))
    assert calibration.model == best
    model = tmp_path / "m.onnx"
    model.write_bytes(conv_net().SerializeToString())
    bigger = tmp_path / "big.onnx"
    bigger.write_bytes(conv_net(channels=32).SerializeToString())
    for name, fit in STORABLE.items():  # each storable model survives JSON exactly
        stored = replace(calibration, model=name, params=fit(x, y))
        path = stored.save(tmp_path / "targets" / "host-1t" / f"calibration-{name}.json")
        again = Calibration.load(path)
        assert again == stored
        assert again.predict_seconds(model) == pytest.approx(stored.predict_seconds(model))
        assert again.predict_seconds(bigger) > 0 and again.predict_seconds(model) > 0
    trees = boosted_params(x, y)
    assert np.allclose(predict_params(trees, x[:5]), predict_params(json.loads(json.dumps(trees)), x[:5]))
    data = json.loads(path.read_text())
    data["feature_names"] = data["feature_names"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="another version"):
        Calibration.load(path)
    path.write_text("{ not json")
    with pytest.raises(UserError, match="cannot read calibration"):
        Calibration.load(path)
    with pytest.raises(UserError, match="at least 10 measured models"):
        fit_calibration(x[:5], x[:5, 0], y[:5], target="host", threads=1, created="", device="")


def test_deployability_on_memory_ops_and_dtypes():
    m7, rpi4 = shipped_profiles()["cortex-m7"], shipped_profiles()["rpi4"]
    small = analyze(conv_net())
    assert deployability(small, m7).ok and not deployability(small, m7).reasons
    big = analyze(conv_net(channels=256, size=64))  # 64x64x256 fp32 activations: 4 MB > 1 MB RAM
    verdict = deployability(big, m7)
    assert not verdict.ok and "peak activations" in verdict.reasons[0]
    assert "exceed RAM 1 MB" in verdict.reasons[0]
    bigger = analyze(conv_net(channels=512, size=128))
    assert deployability(bigger, m7).violation > verdict.violation  # steers: more overrun, worse
    assert deployability(big, rpi4).ok  # 4 GB of RAM
    banned = replace(m7, unsupported_ops=("Relu",))
    verdict = deployability(small, banned)
    assert not verdict.ok and verdict.violation >= 1
    assert "unsupported op(s) on cortex-m7: Relu" in verdict.reasons
    assert deployability(analyze(conv_net(op="Sigmoid")), banned).ok
    no_float = replace(m7, dtypes=("int8",))
    assert "unsupported dtype(s) on cortex-m7: float32" in deployability(small, no_float).reasons


def test_plans_for_each_target_and_mode(tmp_path):
    host = plan_latency("host", None, None, 1, 5, tmp_path)
    assert host.mode == "measure" and host.predictor is None and host.profile is None
    with pytest.raises(UserError, match="no calibration for host .* 'edgepareto calibrate --target host'"):
        plan_latency("host", "predict", None, 1, 5, tmp_path)
    rpi = plan_latency("rpi4", None, None, 1, 5, tmp_path)
    assert rpi.mode == "predict" and rpi.profile.name == "rpi4" and rpi.measurer is None
    with pytest.raises(UserError, match="rpi4 cannot be measured from here: run 'edgepareto agent'"):
        plan_latency("rpi4", "hybrid", None, 1, 5, tmp_path)
    with pytest.raises(UserError, match="--latency must be one of"):
        plan_latency("host", "guess", None, 1, 5, tmp_path)
    with pytest.raises(UserError, match="unknown target"):
        plan_latency("toaster", None, None, 1, 5, tmp_path)
    with pytest.raises(UserError, match="no profile file"):
        plan_latency(str(tmp_path / "board.yaml"), None, None, 1, 5, tmp_path)
    x, y = synthetic(20, 0)
    fit_calibration(x, x[:, 0], y, target="host", threads=1, created="", device="").save(
        tmp_path / "targets" / "host-1t" / "calibration-20260101.json"
    )
    assert latest_calibration(tmp_path, "host", 1).name == "calibration-20260101.json"
    assert latest_calibration(tmp_path, "host", 2) is None  # a calibration holds for its thread count
    hybrid = plan_latency("host", "hybrid", None, 1, 5, tmp_path)
    assert isinstance(hybrid.predictor, CalibratedTarget) and hybrid.final is hybrid.measurer
