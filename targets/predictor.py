"""The calibrated latency predictor: an additive kernel-class model fitted on one device's measurements.

Features: every node of the graph analysis falls into a kernel class (convolution, depthwise
convolution, matrix product, normalisation, quantization, data movement, elementwise), split by the
element type it computes in (fp32, int8, fp16). Per class the graph contributes its work (MACs, or
output elements for ops that do not multiply-accumulate), the bytes it moves (weights read plus
activations written) and its node count. Latency is modelled as a non-negative combination of those
features plus a constant per call, fitted by non-negative least squares on relative error, so each
coefficient is a per-class cost (seconds per MAC, per byte, per node) and the model extrapolates the
way a device does: more work, never less time. ``calibrate`` compares it with a FLOPs-proportional
model and with the profile's analytic prior scaled to the device, by cross-validation.

Needs numpy and scipy only (no torch), like the graph analysis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from search.errors import UserError
from targets.graph import GraphCost, NodeCost

TOLERANCE = 0.10  # "within ±10%"
CONV_KINDS = ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose")
MATMUL_KINDS = ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "Einsum", "FusedMatMul")
INT8_KINDS = ("ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul")
QUANT_KINDS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast")
NORM_KINDS = (
    "LayerNormalization", "BatchNormalization", "Softmax", "ReduceMean", "ReduceSum", "Erf", "Sqrt",
    "Pow", "Div", "GlobalAveragePool", "AveragePool", "MaxPool", "Tanh", "Sigmoid", "HardSigmoid",
    "HardSwish", "Exp",
)
MOVE_KINDS = (
    "Reshape", "Transpose", "Concat", "Gather", "Slice", "Split", "Squeeze", "Unsqueeze", "Flatten",
    "Expand", "Identity", "Pad", "Tile", "Shape", "ConstantOfShape", "Range", "Where", "Equal",
    "GatherElements", "ScatterND", "Resize",
)
KINDS = ("conv", "dwconv", "matmul", "norm", "quant", "move", "elementwise")
DTYPES = ("fp32", "int8", "fp16")
MEASURES = ("work", "bytes", "nodes")
FEATURES = tuple(f"{k}.{d}.{m}" for k in KINDS for d in DTYPES for m in MEASURES)
#: Scale of each measure, so the solver sees numbers near 1 (MACs in millions, bytes in MB).
SCALE = {"work": 1e-6, "bytes": 1e-6, "nodes": 1.0}


def _is_depthwise(node: NodeCost) -> bool:
    index = 3 if node.op_type == "QLinearConv" else 1
    weight = node.input_shapes[index] if len(node.input_shapes) > index else None
    data = node.input_shapes[0]
    return bool(weight and data and len(weight) > 1 and weight[1] == 1 and data[1] > 1)


def node_class(node: NodeCost, qdq: bool) -> tuple[str, str]:
    """(kind, dtype) of one node. In a QDQ graph onnxruntime fuses the MAC ops into int8 kernels."""
    op = node.op_type
    if op in CONV_KINDS:
        kind = "dwconv" if _is_depthwise(node) else "conv"
    elif op in MATMUL_KINDS:
        kind = "matmul"
    elif op in QUANT_KINDS:
        kind = "quant"
    elif op in NORM_KINDS:
        kind = "norm"
    elif op in MOVE_KINDS:
        kind = "move"
    else:
        kind = "elementwise"
    if op in INT8_KINDS or (qdq and kind in ("conv", "dwconv", "matmul")):
        dtype = "int8"
    elif node.dtype == "float16":
        dtype = "fp16"
    else:
        dtype = "fp32"
    return kind, dtype


def features(cost: GraphCost) -> np.ndarray:
    """The feature vector (``FEATURES`` order) of one analysed graph. Nodes computed from weights
    alone are folded away by onnxruntime, so they are not counted."""
    qdq = "QuantizeLinear" in cost.op_counts and "DequantizeLinear" in cost.op_counts
    index = {name: i for i, name in enumerate(FEATURES)}
    x = np.zeros(len(FEATURES))
    for node in cost.nodes:
        if node.activation_bytes == 0:
            continue
        kind, dtype = node_class(node, qdq)
        if qdq and kind == "quant" and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue  # fused into the int8 kernels
        key = f"{kind}.{dtype}"
        x[index[f"{key}.work"]] += (node.macs or node.elements) * SCALE["work"]
        x[index[f"{key}.bytes"]] += (node.param_bytes + node.activation_bytes) * SCALE["bytes"]
        x[index[f"{key}.nodes"]] += 1
    return x


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
    coef = _nnls_relative(np.column_stack([prior, np.ones_like(prior)]), y)
    return lambda _x2, p2: np.column_stack([p2, np.ones_like(p2)]) @ coef


def fit_kernels(x: np.ndarray, prior: np.ndarray, y: np.ndarray) -> Fitted:
    """The additive kernel-class model: non-negative per-class costs plus a constant."""
    design = np.column_stack([x, np.ones(len(x))])
    coef = _nnls_relative(design, y)
    return lambda x2, _p: np.column_stack([x2, np.ones(len(x2))]) @ coef


MODELS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], Fitted]] = {
    "flops": fit_flops, "prior": fit_prior, "kernels": fit_kernels,
}
CHOSEN = "kernels"


def _total_macs(x: np.ndarray) -> np.ndarray:
    cols = [i for i, n in enumerate(FEATURES) if n.split(".")[0] in ("conv", "dwconv", "matmul")
            and n.endswith(".work")]
    return x[:, cols].sum(axis=1) + 1e-9


def _nnls_relative(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ||(design @ coef - y) / y|| subject to coef >= 0, with a little ridge for stability."""
    weighted = design / y[:, None]
    ridge = 1e-6 * np.sqrt(len(y))
    a = np.vstack([weighted, ridge * np.eye(design.shape[1])])
    b = np.concatenate([np.ones(len(y)), np.zeros(design.shape[1])])
    coef, _ = nnls(a, b, maxiter=50 * design.shape[1])
    return coef


def cross_validate(
    x: np.ndarray, prior: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0
) -> dict[str, Score]:
    """K-fold cross-validated score of every model in ``MODELS`` on the same folds."""
    order = np.random.default_rng(seed).permutation(len(y))
    predictions = {name: np.empty(len(y)) for name in MODELS}
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        for name, fit in MODELS.items():
            predictions[name][fold] = fit(x[train], prior[train], y[train])(x[fold], prior[fold])
    return {name: score(p, y) for name, p in predictions.items()}


@dataclass(frozen=True)
class Calibration:
    """A fitted predictor for one target, with the evidence behind it."""

    target: str
    model: str
    coef: tuple[float, ...]
    feature_names: tuple[str, ...]
    cv: dict[str, dict[str, float]]  # model name -> Score as a dict
    samples: int
    threads: int
    created: str
    device: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def error_pct(self) -> float:
        """The chosen model's cross-validated MAPE: the error estimate attached to predictions."""
        return float(self.cv[self.model]["mape"])

    def predict_seconds(self, cost: GraphCost) -> float:
        x = features(cost)
        return float(np.dot(np.append(x, 1.0), np.asarray(self.coef)))

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            data = json.loads(path.read_text())
            data["coef"] = tuple(data["coef"])
            data["feature_names"] = tuple(data["feature_names"])
            calibration = cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise UserError(f"cannot read calibration {path}: {exc}") from None
        if calibration.feature_names != FEATURES:
            raise UserError(f"calibration {path} was made by another version; run edgepareto calibrate again")
        return calibration


def fit_calibration(
    x: np.ndarray, prior: np.ndarray, y: np.ndarray, *, target: str, threads: int, created: str,
    device: str, folds: int = 5,
) -> Calibration:
    """Cross-validate every model, then fit the kernel-class model on all samples."""
    if len(y) < 2 * folds:
        raise UserError(f"calibration needs at least {2 * folds} measured models, got {len(y)}")
    cv = cross_validate(x, prior, y, folds)
    coef = _nnls_relative(np.column_stack([x, np.ones(len(x))]), y)
    return Calibration(
        target=target, model=CHOSEN, coef=tuple(float(c) for c in coef), feature_names=FEATURES,
        cv={name: asdict(s) for name, s in cv.items()}, samples=len(y), threads=threads,
        created=created, device=device,
    )


def stack(rows: Sequence[np.ndarray]) -> np.ndarray:
    return np.vstack(rows) if rows else np.zeros((0, len(FEATURES)))
