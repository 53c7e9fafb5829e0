"""Kernel-level latency: executed graphs, onnxruntime's per-node profile, the per-kernel cost model,
transfer to another device, and conformal prediction intervals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from search.calibrate.candidates import CandidateFile
from search.calibrate.fit import measure_samples, transfer_calibration
from targets.host import HostTarget
from targets.kernels import (
    NODE_FEATURES,
    Kernels,
    executed_graph,
    export_tree,
    fit_group_factors,
    model_kernels,
    named,
    tree_predict,
)
from targets.latency import CalibratedTarget
from targets.predictor import (
    KERNEL_LEVEL,
    Calibration,
    conformal,
    coverage_of,
    fit_calibration,
    fit_kernel_level,
    fit_transfer,
    predict_kernel_level,
)
from targets.profile import shipped_profiles


def conv_net(channels: int, size: int, depth: int = 2, nameless: bool = False) -> onnx.ModelProto:
    """``depth`` 3x3 convolutions with ReLU, a global pool and a MatMul, by hand."""
    rng = np.random.default_rng(channels * 100 + size)
    inits, nodes, prev, c_in = [], [], "x", 3
    for i in range(depth):
        weight = rng.standard_normal((channels, c_in, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev, c_in = f"r{i}", channels
    inits.append(numpy_helper.from_array(rng.standard_normal((channels, 10)).astype(np.float32), "wf"))
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["f"], name="flat"),
              helper.make_node("MatMul", ["f", "wf"], ["y"], name="fc")]
    if nameless:
        for node in nodes:
            node.name = ""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_named_gives_every_nameless_node_a_unique_name():
    model = conv_net(8, 8, nameless=True)
    model.graph.node[1].name = "Relu_n3"  # a name a generated one would collide with
    names = [n.name for n in named(model).graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert [n.name for n in model.graph.node][1] == "Relu_n3"  # the original is left alone


def test_profiled_nodes_are_the_executed_graphs_nodes(tmp_path):
    """Every node onnxruntime's profiler times is a node of the executed graph, joined by name, even
    for a file whose nodes have no names (onnxruntime's profiler would invent names otherwise)."""
    path = tmp_path / "m.onnx"
    path.write_bytes(named(conv_net(16, 16, nameless=True)).SerializeToString())
    k = model_kernels(path)
    times = HostTarget(repeats=5).node_times(path, (1, 3, 16, 16))
    assert set(times) == set(k.names)
    assert all(us > 0 for _op, us in times.values())
    ops = {op for op, _ in times.values()}
    assert "Relu" not in ops  # fused into its convolution: the executed graph is not the file's
    assert k.x.shape == (len(k), len(NODE_FEATURES))
    conv = [kind for kind in k.kinds if kind.startswith(("Conv", "FusedConv"))]
    assert conv and all(kind.endswith("|fp32|k") for kind in conv)


def test_executed_graph_can_leave_out_x86_layout_transforms(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_net(16, 16), path)
    default = {n.domain for n in executed_graph(path).graph.node}
    portable = {n.domain for n in executed_graph(path, disabled_optimizers=("NchwcTransformer",)).graph.node}
    assert "com.microsoft.nchwc" not in portable
    assert default != portable or "com.microsoft.nchwc" not in default  # a CPU without NCHWc: same


def test_vectorized_tree_matches_sklearn():
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 4))
    tree = DecisionTreeRegressor(max_depth=5, random_state=0).fit(x, x[:, 0] * 2 + np.sin(x[:, 1]))
    assert tree_predict(export_tree(tree.tree_), x) == pytest.approx(tree.predict(x))


# -- the cost model on synthetic kernels whose true cost is known -------------------------------------

def synthetic_models(n: int, seed: int, scale: dict[str, float] | None = None):
    """Models of 5-40 kernels of three kinds; a kernel's true microseconds: kind constant + cost per
    MAC, times ``scale[kind]`` (another device), with 3% noise. Returns kernels, node times, seconds."""
    rng = np.random.default_rng(seed)
    kinds_cost = {"Conv|fp32|k": (2.0, 4e-3), "Conv|fp32|dw": (1.0, 2e-2), "Add|fp32|": (0.5, 0.0)}
    scale = scale or {}
    models, node_us, seconds = [], [], []
    for _ in range(n):
        count = int(rng.integers(5, 40))
        kinds = rng.choice(list(kinds_cost), count)
        macs = rng.uniform(1e3, 1e6, count)
        x = np.zeros((count, len(NODE_FEATURES)))
        x[:, 0] = np.log1p(macs)
        x[:, 1] = np.log1p(macs / 50)
        truth = np.array([(kinds_cost[k][0] + kinds_cost[k][1] * m) * scale.get(k, 1.0)
                          for k, m in zip(kinds, macs)])
        us = truth * rng.normal(1, 0.03, count)
        models.append(Kernels(tuple(f"n{i}" for i in range(count)), tuple(kinds), x))
        node_us.append(us)
        seconds.append((truth.sum() + 20.0) * 1e-6 * rng.normal(1, 0.01))
    return models, node_us, np.array(seconds)


def test_kernel_level_model_predicts_held_out_models():
    models, node_us, y = synthetic_models(60, 0)
    params = fit_kernel_level(models[:40], node_us[:40], y[:40])
    predicted = predict_kernel_level(params, models[40:])
    err = np.abs(predicted / y[40:] - 1)
    assert np.mean(err <= 0.10) >= 0.95


def test_transfer_learns_per_kind_costs_from_twenty_models():
    """Device B costs a spatial conv 0.4 times, a depthwise one 1.5 times and an Add three times what
    A does: A's model with per-kind lines fitted on 20 of B's models predicts B; unadapted it does
    not."""
    scale = {"Conv|fp32|k": 0.4, "Conv|fp32|dw": 1.5, "Add|fp32|": 3.0}
    a_models, a_us, a_y = synthetic_models(60, 1)
    source = fit_kernel_level(a_models, a_us, a_y)
    b_models, _, b_y = synthetic_models(80, 2, scale)
    params = fit_transfer(source, b_models[:20], b_y[:20])
    adapted = predict_kernel_level(params, b_models[20:])
    unadapted = predict_kernel_level(source, b_models[20:])
    within = lambda p: float(np.mean(np.abs(p / b_y[20:] - 1) <= 0.10))  # noqa: E731
    error = lambda p: float(np.mean(np.abs(p / b_y[20:] - 1)))  # noqa: E731
    assert within(adapted) >= 0.9
    assert error(unadapted) > 4 * error(adapted)
    factors = params["head"]["factors"]
    # per group, in the right direction (the ridge holds each towards the pooled factor)
    assert factors["convk.fp32"] < 0.7 < 1.1 < factors["elem.fp32"]


def test_group_factors_are_pulled_to_the_pooled_one_only_where_the_data_do_not_insist():
    """Two head terms: B runs the first twice as slowly and the second as A does. Twenty models
    that mix them recover both factors; a term no model has keeps the pooled factor."""
    rng = np.random.default_rng(0)
    terms = np.column_stack([rng.uniform(1, 5, 20), rng.uniform(1, 5, 20), np.zeros(20)]) * 1e-3
    seconds = terms[:, 0] * 2.0 + terms[:, 1] * 1.0
    factors = fit_group_factors(terms, ["conv.fp32", "mm.fp32", "norm.fp32"], seconds)
    assert factors["conv.fp32"] == pytest.approx(2.0, rel=0.05)
    assert factors["mm.fp32"] == pytest.approx(1.0, rel=0.05)
    assert "norm.fp32" not in factors and factors["*"] == pytest.approx(seconds.sum() / terms.sum(), rel=0.1)


def test_conformal_interval_covers_about_ninety_percent_when_the_truth_is_known():
    """Predictions off by a known log-normal error (sigma 0.08) and a bias of 3%: the interval fitted
    on 300 calibration samples holds 90% +- 3 points of 5,000 new ones."""
    rng = np.random.default_rng(0)
    predicted = rng.uniform(0.1, 10, 5300)
    measured = predicted * np.exp(0.03 + rng.normal(0, 0.08, 5300))
    interval = conformal(predicted[:300], measured[:300])
    assert interval[0] < 0 < interval[1]
    assert coverage_of(predicted[300:], measured[300:], interval) == pytest.approx(0.90, abs=0.03)
    true_low, true_high = 0.03 - 1.645 * 0.08, 0.03 + 1.645 * 0.08
    assert interval == pytest.approx([true_low, true_high], abs=0.03)


def test_conformal_with_few_samples_takes_the_extremes():
    interval = conformal(np.ones(10), np.exp(np.linspace(-0.1, 0.2, 10)))
    assert interval == pytest.approx([-0.1, 0.2])


# -- the profiler-based calibration on a tiny set -----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_samples(tmp_path_factory):
    """Twelve hand-made conv nets of different widths and sizes, timed and profiled on this CPU."""
    root = tmp_path_factory.mktemp("tiny")
    files = []
    for i, (channels, size, depth) in enumerate(
        (c, s, d) for c in (8, 32) for s in (8, 16, 32) for d in (1, 3)
    ):
        path = root / f"{i:02d}" / "model.onnx"
        path.parent.mkdir()
        onnx.save(conv_net(channels, size, depth, nameless=i % 2 == 0), path)
        files.append(CandidateFile(path, "convnet", f"c{channels} s{size} d{depth}", (1, 3, size, size)))
    return measure_samples(files, HostTarget(repeats=5), shipped_profiles()["arm-a53-1core"], passes=2)


def test_calibration_profiles_every_kernel_and_fits_the_kernel_level_model(tiny_samples, tmp_path):
    s = tiny_samples
    assert len(s.kernels) == len(s.y) == 12
    assert all(np.isfinite(u).all() for u in s.node_us)  # every executed node was profiled
    assert s.times is not None and s.times.shape == (2, 12)
    for u, y in zip(s.node_us, s.y):
        # the kernels are most of the model's time; at a few microseconds per kernel the profiler's
        # own ~2 us per node can make their sum several times the unprofiled run (the head's job)
        assert 0.2 * y < u.sum() * 1e-6 < 10 * y
    calibration = fit_calibration(
        s.x, s.prior, s.y, target="host", threads=1, created="now", device="here", kernels=s.kernels,
        node_us=s.node_us, graph=s.graph,
    )
    assert KERNEL_LEVEL in calibration.cv
    assert calibration.interval[0] <= 0 <= calibration.interval[1]
    path = calibration.save(tmp_path / "c.json")
    loaded = Calibration.load(path)
    assert loaded.interval == calibration.interval and loaded.model == calibration.model
    target = CalibratedTarget(loaded, path)
    latency = target.latency(tiny_file(tmp_path), (1, 3, 16, 16))
    assert latency.low_ms <= latency.median_ms <= latency.high_ms
    assert latency.source == "predicted:calibrated"


def tiny_file(tmp_path):
    path = tmp_path / "new.onnx"
    onnx.save(conv_net(16, 16, 2), path)
    return path


def test_transfer_calibration_from_a_kernel_level_one(tiny_samples):
    s = tiny_samples
    source = fit_kernel_level(s.kernels, s.node_us, s.y, s.graph)
    calibration = transfer_calibration(
        Calibration(target="host", model=KERNEL_LEVEL, params=source, feature_names=(), cv={}, samples=12,
                    threads=1, created="", device=""),
        s.subset(range(8)), target="host", threads=2, created="now", device="here", origin="transfer from A",
    )
    assert calibration.model == KERNEL_LEVEL and calibration.samples == 8
    assert "factors" in calibration.params["head"]
    assert set(calibration.cv) == {KERNEL_LEVEL}  # leave-one-out on the 8 samples
    assert predict_kernel_level(calibration.params, list(s.kernels)).shape == (12,)
