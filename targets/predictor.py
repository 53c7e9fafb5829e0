"""The calibrated latency predictor: a kernel-class model fitted on one device's measurements.

Features come from the graph onnxruntime actually runs (``graph.optimized``: its portable fusions
applied). Every node falls into a kernel class (convolution, pointwise convolution, depthwise
convolution, weight matmul, activation-by-activation matmul, normalisation/reduction, quantization,
cast, data movement, elementwise), split by the element type it computes in (fp32, static int8,
dynamic int8, fp16). Per class the graph contributes its work (MACs, or output elements for ops
that do not multiply-accumulate), the bytes it moves (weights read plus outputs written) and its
node count. Latency is a non-negative combination of those features plus a constant per call,
fitted by non-negative least squares on relative error, so each coefficient is a per-class cost
and more work never predicts less time; a boosted-tree correction on top learns the interactions
a sum cannot express. These model-level predictors are the baselines of the kernel-level one
(``KERNEL_LEVEL``, ``targets.kernels``), which predicts each executed kernel from onnxruntime's
per-node profile and sums them. ``calibrate`` chooses between them, next to a FLOPs-proportional
model and the profile's analytic prior, by cross-validation, and attaches a prediction interval
from the chosen model's cross-validated errors (``conformal``).

Needs numpy, scipy and scikit-learn (fitting only), never torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search.core.atomic import write_text
from search.core.errors import UserError
from targets.graph import GraphCost, NodeCost, analyze, optimized
from targets.kernels import (
    Kernels,
    export_tree,
    fit_group_factors,
    fit_head,
    fit_nodes,
    head_terms,
    itemsize,
    model_kernels,
    nnls_relative,
    predict_head,
    predict_nodes,
    tree_predict,
)

TOLERANCE = 0.10  # "within ±10%"
#: The kernel-level predictor's name (its parameters: the node model, the head, the graph settings).
KERNEL_LEVEL = "kernel-level"
#: Coverage of the prediction interval every calibrated latency carries.
COVERAGE = 0.90
CONV_KINDS = ("Conv", "ConvInteger", "QLinearConv", "FusedConv", "ConvTranspose")
MATMUL_KINDS = (
    "MatMul", "Gemm", "FusedMatMul", "FusedGemm", "QGemm", "MatMulInteger", "QLinearMatMul",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "Einsum",
)
#: Integer kernels fed by a runtime quantization of their input (dynamic int8) ...
DYNAMIC_INT8_KINDS = ("ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
#: ... and the fused QDQ ones with fixed scales (static int8): they cost differently per MAC.
STATIC_INT8_KINDS = ("QLinearConv", "QLinearMatMul", "QGemm")
QUANT_KINDS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
NORM_KINDS = (
    "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
    "BatchNormalization", "Softmax", "QLinearSoftmax", "ReduceMean", "ReduceSum", "ReduceMax",
    "ReduceL2", "Gelu", "BiasGelu", "FastGelu", "Erf", "Sqrt", "Exp", "Log", "GlobalAveragePool",
    "QLinearGlobalAveragePool", "AveragePool", "MaxPool", "Tanh", "Sigmoid", "HardSigmoid",
    "HardSwish", "TopK", "ArgMax",
)
MOVE_KINDS = (
    "Reshape", "Transpose", "Concat", "QLinearConcat", "Gather", "Slice", "Split", "Squeeze",
    "Unsqueeze", "Flatten", "Expand", "Identity", "Pad", "Tile", "Shape", "ConstantOfShape", "Range",
    "Where", "Equal", "Less", "GatherElements", "ScatterND", "Resize",
)
KINDS = ("conv", "pwconv", "dwconv", "matmul", "bmm", "norm", "quant", "cast", "move", "elementwise")
DTYPES = ("fp32", "int8", "int8dyn", "fp16")
MAC_KINDS = ("conv", "pwconv", "dwconv", "matmul", "bmm")
MEASURES = ("work", "bytes", "nodes")
FEATURES = tuple(f"{k}.{d}.{m}" for k in KINDS for d in DTYPES for m in MEASURES)
#: Scale of each measure, so the solver sees numbers near 1 (MACs in millions, bytes in MB).
SCALE = {"work": 1e-6, "bytes": 1e-6, "nodes": 1.0}


def _is_depthwise(node: NodeCost) -> bool:
    index = 3 if node.op_type == "QLinearConv" else 1
    weight = node.input_shapes[index] if len(node.input_shapes) > index else None
    data = node.input_shapes[0]
    return bool(weight and data and len(weight) > 1 and weight[1] == 1 and data[1] > 1)


def _is_pointwise(node: NodeCost) -> bool:
    index = 3 if node.op_type == "QLinearConv" else 1
    weight = node.input_shapes[index] if len(node.input_shapes) > index else None
    return bool(weight and len(weight) > 2 and all(k == 1 for k in weight[2:]))


def node_class(node: NodeCost) -> tuple[str, str]:
    """(kind, dtype) of one node of an optimized graph."""
    op = node.op_type
    if op in CONV_KINDS:
        kind = "dwconv" if _is_depthwise(node) else "pwconv" if _is_pointwise(node) else "conv"
    elif op in MATMUL_KINDS:
        kind = "matmul" if node.param_bytes else "bmm"  # bmm: activations by activations (attention)
    elif op in QUANT_KINDS:
        kind = "quant"
    elif op == "Cast":
        kind = "cast"
    elif op in NORM_KINDS:
        kind = "norm"
    elif op in MOVE_KINDS:
        kind = "move"
    else:
        kind = "elementwise"
    if op in DYNAMIC_INT8_KINDS:
        dtype = "int8dyn"
    elif op in STATIC_INT8_KINDS or op.startswith("QLinear"):
        dtype = "int8"
    elif node.dtype == "float16":
        dtype = "fp16"
    else:
        dtype = "fp32"
    return kind, dtype


def features(cost: GraphCost) -> np.ndarray:
    """The feature vector (``FEATURES`` order) of an analysed optimized graph (``graph_features``).
    Every node counts: what onnxruntime could fold it already has, and what is left runs on every
    call (an fp16 model's weights cast to fp32 on a CPU without fp16 kernels, for one)."""
    index = {name: i for i, name in enumerate(FEATURES)}
    x = np.zeros(len(FEATURES))
    for node in cost.nodes:
        key = ".".join(node_class(node))
        written = node.elements * itemsize(node.dtype)
        x[index[f"{key}.work"]] += (node.macs or node.elements) * SCALE["work"]
        x[index[f"{key}.bytes"]] += (node.param_bytes + written) * SCALE["bytes"]
        x[index[f"{key}.nodes"]] += 1
    return x


def graph_features(path: Path, batch: int = 1) -> np.ndarray:
    """Features of the graph onnxruntime runs for this file (its portable fusions applied)."""
    return features(analyze(optimized(path, batch), batch))


@dataclass(frozen=True)
class Score:
    """How well predictions match measurements."""

    within: float  # share of models within ±10%
    mape: float  # mean absolute percentage error, in percent
    count: int

    def __str__(self) -> str:
        return f"{self.within:.1%} within ±{TOLERANCE:.0%}, MAPE {self.mape:.1f}% (n={self.count})"


def score(predicted: np.ndarray, measured: np.ndarray) -> Score:
    err = np.abs(np.asarray(predicted) - measured) / measured
    return Score(float(np.mean(err <= TOLERANCE)), float(np.mean(err) * 100), len(measured))


# --- the models compared by cross-validation. Each: fit(X, prior, y) -> predict(X, prior). ---
Fitted = Callable[[np.ndarray, np.ndarray], np.ndarray]


def fit_flops(x: np.ndarray, prior: np.ndarray, y: np.ndarray) -> Fitted:
    """FLOPs-proportional baseline: latency = a * MACs (a fitted on relative error)."""
    macs = _total_macs(x)
    a = float(np.sum(macs / y) / np.sum((macs / y) ** 2))
    return lambda x2, _p: a * _total_macs(x2)


def fit_prior(x: np.ndarray, prior: np.ndarray, y: np.ndarray) -> Fitted:
    """The analytic prior, scaled: latency = a * prior + b (non-negative)."""
    coef = nnls_relative(np.column_stack([prior, np.ones_like(prior)]), y)
    return lambda _x2, p2: np.column_stack([p2, np.ones_like(p2)]) @ coef


def kernel_params(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The additive kernel-class model: non-negative per-class costs plus a constant per call."""
    return {"coef": nnls_relative(np.column_stack([x, np.ones(len(x))]), y).tolist()}


def boosted_params(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The kernel-class model times a learned correction: gradient-boosted trees (depth 2) on the
    log of the ratio measured / kernel model, from the log features. The additive model carries
    the extrapolation; the trees learn where the per-class costs interact (an fp16 graph whose
    weights are cast on every call, a dynamic int8 conv that is slow at one shape and not at
    another)."""
    from sklearn.ensemble import GradientBoostingRegressor

    params = kernel_params(x, y)
    base = np.maximum(predict_params(params, x), 1e-9)
    trees = GradientBoostingRegressor(
        n_estimators=200, max_depth=2, learning_rate=0.05, subsample=0.8, random_state=0
    ).fit(np.log1p(x), np.log(y / base))
    params["trees"] = {
        "init": float(trees.init_.constant_.ravel()[0]), "rate": trees.learning_rate,
        "trees": [export_tree(est[0].tree_) for est in trees.estimators_],
    }
    return params


def predict_params(params: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Seconds predicted for feature rows ``x`` by stored model parameters (plain JSON data)."""
    x = np.atleast_2d(x)
    seconds = np.column_stack([x, np.ones(len(x))]) @ np.asarray(params["coef"])
    boost = params.get("trees")
    if boost:
        logs = np.log1p(np.maximum(x, 0))
        correction = boost["init"] + boost["rate"] * sum(tree_predict(t, logs) for t in boost["trees"])
        seconds = np.maximum(seconds, 1e-9) * np.exp(correction)
    return seconds


#: Models a calibration can store, by name: parameters from (features, seconds).
STORABLE: dict[str, Callable[[np.ndarray, np.ndarray], dict[str, Any]]] = {
    "kernels": kernel_params, "kernels+trees": boosted_params,
}


def _storable(name: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], Fitted]:
    def fit(x: np.ndarray, _prior: np.ndarray, y: np.ndarray) -> Fitted:
        params = STORABLE[name](x, y)
        return lambda x2, _p: predict_params(params, x2)

    return fit


MODELS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], Fitted]] = {
    "flops": fit_flops, "prior": fit_prior, **{name: _storable(name) for name in STORABLE},
}


def _total_macs(x: np.ndarray) -> np.ndarray:
    cols = [i for i, n in enumerate(FEATURES) if n.split(".")[0] in MAC_KINDS and n.endswith(".work")]
    return x[:, cols].sum(axis=1) + 1e-9


def out_of_fold(
    x: np.ndarray, prior: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """K-fold out-of-fold predictions of every model in ``MODELS`` on the same folds."""
    order = np.random.default_rng(seed).permutation(len(y))
    predictions = {name: np.empty(len(y)) for name in MODELS}
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        for name, fit in MODELS.items():
            predictions[name][fold] = fit(x[train], prior[train], y[train])(x[fold], prior[fold])
    return predictions


def cross_validate(
    x: np.ndarray, prior: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0
) -> dict[str, Score]:
    """K-fold cross-validated score of every model in ``MODELS`` on the same folds."""
    return {name: score(p, y) for name, p in out_of_fold(x, prior, y, folds, seed).items()}


def fit_kernel_level(
    models: Sequence[Kernels], node_us: Sequence[np.ndarray], y: np.ndarray,
    graph: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The kernel-level predictor's parameters: the per-kernel cost model fitted on every profiled
    node of ``models`` (``node_us``: measured microseconds per node, NaN where not profiled), and
    the head mapping the kernels' predicted times to the measured whole-model ``y`` seconds."""
    xs = [k.x[np.isfinite(t)] for k, t in zip(models, node_us)]
    kinds = [kind for k, t in zip(models, node_us) for kind, ok in zip(k.kinds, np.isfinite(t)) if ok]
    us = np.concatenate([t[np.isfinite(t)] for t in node_us])
    nodes = fit_nodes(np.vstack(xs), kinds, us)
    head = fit_head(models, [predict_nodes(nodes, k) for k in models], y)
    return {"nodes": nodes, "head": head, "graph": dict(graph or {})}


def predict_kernel_level(params: dict[str, Any], models: Sequence[Kernels]) -> np.ndarray:
    """Seconds predicted for each model's kernels by kernel-level parameters."""
    return predict_head(params["head"], models, [predict_nodes(params["nodes"], k) for k in models])


def cross_validate_kernels(
    models: Sequence[Kernels], node_us: Sequence[np.ndarray], y: np.ndarray, folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold kernel-level predictions (the same folds as ``cross_validate``)."""
    order = np.random.default_rng(seed).permutation(len(y))
    out = np.empty(len(y))
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        params = fit_kernel_level([models[i] for i in train], [node_us[i] for i in train], y[train])
        out[fold] = predict_kernel_level(params, [models[i] for i in fold])
    return out


def fit_transfer(
    source: dict[str, Any], models: Sequence[Kernels], y: np.ndarray, graph: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Kernel-level parameters for device B from device A's (``source``) and a few of B's measured
    models: A's kernel cost model and head, with one factor per kernel group of the head (and its
    constant) fitted on B's whole-model times (``targets.kernels.fit_group_factors``). B's per-node
    profile is not needed: A's head maps A's kernel predictions to a model's time, and the factors
    say how much slower or faster each kind of kernel is on B. (Fitting factors per kernel on B's
    profiled nodes was tried and measured worse: the head's per-group terms amplify any change of
    its inputs.)"""
    head = {key: value for key, value in source["head"].items() if key != "factors"}
    terms = head_terms(head, models, [predict_nodes(source["nodes"], k) for k in models])
    head["factors"] = fit_group_factors(terms, [*head["groups"], "constant"], y)
    return {"nodes": source["nodes"], "head": head, "graph": dict(graph or source["graph"])}


def transfer_out_of_fold(source: dict[str, Any], models: Sequence[Kernels], y: np.ndarray) -> np.ndarray:
    """Leave-one-model-out predictions of a transferred calibration (few samples: every one held
    out once)."""
    out = np.empty(len(y))
    for i in range(len(y)):
        rest = [j for j in range(len(y)) if j != i]
        params = fit_transfer(source, [models[j] for j in rest], y[rest])
        out[i] = predict_kernel_level(params, [models[i]])[0]
    return out


def conformal(predicted: np.ndarray, measured: np.ndarray, coverage: float = COVERAGE) -> list[float]:
    """A split-conformal interval from held-out (or out-of-fold) predictions: the quantiles of
    log(measured / predicted) at (1 - coverage) / 2 and (1 + coverage) / 2, each taken at the
    finite-sample rank (ceil((n + 1) q) of n, clipped to the extremes), so that a new prediction's
    interval [p * exp(low), p * exp(high)] holds the measurement with about ``coverage``
    probability when errors are exchangeable. Returns [low, high] as log ratios."""
    r = np.sort(np.log(np.asarray(measured) / np.asarray(predicted)))
    n = len(r)
    if n == 0:
        return [0.0, 0.0]
    tail = (1 - coverage) / 2
    hi = min(n - 1, math.ceil((n + 1) * (1 - tail)) - 1)
    lo = max(0, math.floor((n + 1) * tail) - 1)
    return [float(min(r[lo], 0.0)), float(max(r[hi], 0.0))]


def coverage_of(predicted: np.ndarray, measured: np.ndarray, interval: Sequence[float]) -> float:
    """Share of ``measured`` inside [predicted * exp(low), predicted * exp(high)]."""
    low, high = np.asarray(predicted) * np.exp(interval[0]), np.asarray(predicted) * np.exp(interval[1])
    return float(np.mean((measured >= low) & (measured <= high)))


@dataclass(frozen=True)
class Calibration:
    """A fitted predictor for one target, with the evidence behind it."""

    target: str
    model: str  # a name in STORABLE
    params: dict[str, Any]
    feature_names: tuple[str, ...]
    cv: dict[str, dict[str, float]]  # model name -> Score as a dict
    samples: int
    threads: int
    created: str
    device: str
    #: The prediction interval: [low, high] log ratios of measured / predicted (``conformal``).
    interval: tuple[float, float] = (0.0, 0.0)
    #: Where the calibration came from: ``scratch``, or ``transfer from <calibration>``.
    origin: str = "scratch"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def error_pct(self) -> float:
        """The chosen model's cross-validated MAPE: the error estimate attached to predictions."""
        return float(self.cv[self.model]["mape"])

    def predict_seconds(self, path: Path, batch: int = 1) -> float:
        if self.model == KERNEL_LEVEL:
            graph = self.params["graph"]
            k = model_kernels(path, batch, self.threads, graph.get("disabled_optimizers", ()))
            return float(predict_kernel_level(self.params, [k])[0])
        return float(predict_params(self.params, graph_features(path, batch))[0])

    def bounds(self, seconds: float) -> tuple[float, float]:
        """The prediction interval around a predicted latency (same unit)."""
        return seconds * math.exp(self.interval[0]), seconds * math.exp(self.interval[1])

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            data = json.loads(path.read_text())
            data["feature_names"] = tuple(data["feature_names"])
            data["interval"] = tuple(data.get("interval", (0.0, 0.0)))
            calibration = cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise UserError(f"cannot read calibration {path}: {exc}") from None
        if calibration.feature_names != FEATURES or calibration.model not in (*STORABLE, KERNEL_LEVEL):
            raise UserError(f"calibration {path} was made by another version; run edgepareto calibrate again")
        return calibration


def fit_calibration(
    x: np.ndarray, prior: np.ndarray, y: np.ndarray, *, target: str, threads: int, created: str,
    device: str, folds: int = 5, kernels: Sequence[Kernels] | None = None,
    node_us: Sequence[np.ndarray] | None = None, graph: dict[str, Any] | None = None,
) -> Calibration:
    """Cross-validate every model (the kernel-level one too when ``kernels`` and their profiled
    ``node_us`` are given), then fit the storable one with the best held-out score (the share within
    ±10%, then the MAPE) on all samples; its out-of-fold errors give the prediction interval."""
    if len(y) < 2 * folds:
        raise UserError(f"calibration needs at least {2 * folds} measured models, got {len(y)}")
    predictions = out_of_fold(x, prior, y, folds)
    if kernels is not None and node_us is not None:
        predictions[KERNEL_LEVEL] = cross_validate_kernels(kernels, node_us, y, folds)
    cv = {name: score(p, y) for name, p in predictions.items()}
    choices = [name for name in (*STORABLE, KERNEL_LEVEL) if name in predictions]
    chosen = max(choices, key=lambda name: (cv[name].within, -cv[name].mape))
    if chosen == KERNEL_LEVEL:
        params = fit_kernel_level(kernels, node_us, y, graph)  # type: ignore[arg-type]
    else:
        params = STORABLE[chosen](x, y)
    return Calibration(
        target=target, model=chosen, params=params, feature_names=FEATURES,
        cv={name: asdict(s) for name, s in cv.items()}, samples=len(y), threads=threads,
        created=created, device=device, interval=tuple(conformal(predictions[chosen], y)),
    )


def stack(rows: Sequence[np.ndarray]) -> np.ndarray:
    return np.vstack(rows) if rows else np.zeros((0, len(FEATURES)))
