"""Kernel-level latency: the graph a device executes, node by node, and a cost model per kernel kind.

onnxruntime optimizes a model before it runs it (fusions, and on x86 the NCHWc layout), so the
kernels that cost time are the nodes of the *executed* graph, not of the exported one.
``executed_graph`` asks onnxruntime for that graph under the measuring session options; its node
names are the names onnxruntime's profiler reports (``targets.agent.profile_nodes``), so a
calibration joins per-node timings to per-node features by name. Nodes a file leaves nameless get a
name first (``named``): onnxruntime's profiler would invent ``Op_<index>`` names the saved graph
does not carry.

Each node is a *kernel*: its kind (op type, the element type it computes in and, for a
convolution, depthwise / pointwise / spatial) and features of its own (MACs, elements and bytes in
and out, parameter bytes, kernel area, stride, groups, channels, spatial size). ``fit_nodes`` fits
one non-negative linear cost per kind (a constant, a cost per MAC and a cost per byte moved) and
boosted trees on the log of measured / linear from the kernel features. ``fit_head`` maps the
predicted kernel times to a model's latency: per kernel group a factor on their sum and a cost per
kernel (the profiler's own time per node comes out negative), and a constant per run, by least
squares on whole-model timings. A transfer to another device scales the head's group terms
(``fit_group_factors``). Every fitted parameter is plain JSON data, predicted with numpy alone.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from scipy.optimize import nnls

from targets.agent import session_options
from targets.graph import NodeCost, analyze

#: Numeric features of one kernel, in this order (log1p of sizes; plain small integers as they are).
NODE_FEATURES = (
    "macs", "out_elements", "in_elements", "param_bytes", "in_bytes", "out_bytes", "kernel_area",
    "stride", "groups", "channels_in", "channels_out", "spatial_out", "inputs", "fused_activation",
)
CONV_OPS = ("Conv", "ConvInteger", "QLinearConv", "FusedConv", "ConvTranspose")
DYNAMIC_INT8 = ("ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
#: A kind seen on fewer nodes than this shares the pooled linear cost of all kinds.
MIN_KIND_NODES = 5
#: Optimizers that only x86 builds of onnxruntime apply (MLAS's blocked NCHWc layout); left out
#: when the executed graph stands for an Arm device's.
X86_ONLY_OPTIMIZERS = ("NchwcTransformer",)


def named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose every node has a unique name (nameless ones get ``<op>_n<index>``)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    taken = {n.name for n in copy.graph.node if n.name}
    for i, node in enumerate(copy.graph.node):
        if not node.name:
            name = f"{node.op_type}_n{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return copy


def named_bytes(path: Path | str) -> bytes:
    """The file's model with every node named, serialized (what is profiled and optimized)."""
    return named(onnx.load(str(path))).SerializeToString()


def executed_graph(
    model: bytes | Path | str, threads: int = 1, disabled_optimizers: Sequence[str] = (),
) -> onnx.ModelProto:
    """The graph onnxruntime runs for ``model`` under the measuring session options (every graph
    optimization, this machine's layout transforms unless ``disabled_optimizers`` names them)."""
    data = model if isinstance(model, bytes) else named_bytes(model)
    with tempfile.TemporaryDirectory(prefix="edgepareto-exec-") as tmp:
        out = Path(tmp) / "executed.onnx"
        opts = session_options(threads)
        opts.optimized_model_filepath = str(out)
        kwargs = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"], **kwargs)
        return onnx.load(str(out))


@dataclass(frozen=True)
class Kernels:
    """The executed nodes of one model: names, kinds and the feature matrix (``NODE_FEATURES``)."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    x: np.ndarray  # nodes x NODE_FEATURES

    def __len__(self) -> int:
        return len(self.names)


def kernels(graph: onnx.ModelProto, batch: int = 1) -> Kernels:
    """Kinds and features of every node of an executed graph."""
    cost = analyze(graph, batch)
    names, kinds, rows = [], [], []
    for proto, node in zip(graph.graph.node, cost.nodes):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}
        names.append(node.name)
        kinds.append(kernel_kind(node, attrs))
        rows.append(kernel_features(node, attrs))
    x = np.asarray(rows, dtype=float) if rows else np.zeros((0, len(NODE_FEATURES)))
    return Kernels(tuple(names), tuple(kinds), x)


def model_kernels(
    path: Path | str, batch: int = 1, threads: int = 1, disabled_optimizers: Sequence[str] = (),
) -> Kernels:
    """The kernels of the graph onnxruntime would execute for the file ``path``."""
    return kernels(executed_graph(path, threads, disabled_optimizers), batch)


def join_profile(k: Kernels, profile: dict[str, tuple[str, float]]) -> np.ndarray:
    """Each kernel's profiled microseconds (NaN when the profiler did not report it), by node name;
    nodes that an optimizer created without a name are named by op type and index, differently in
    the profile and in the saved graph, so the ones left over pair up by op type in execution
    order (the saved graph is in the order it runs)."""
    out = np.full(len(k), np.nan)
    left: dict[str, list[int]] = {}
    for i, name in enumerate(k.names):
        if name in profile:
            out[i] = profile[name][1]
        else:
            left.setdefault(k.kinds[i].split("|")[0], []).append(i)
    names = set(k.names)
    spare: dict[str, list[float]] = {}
    for name, (op, us) in profile.items():  # in the order the nodes ran
        if name not in names:
            spare.setdefault(op, []).append(us)
    for op, indices in left.items():
        for i, us in zip(indices, spare.get(op, [])):
            out[i] = us
    return out


def _weight_shape(node: NodeCost) -> tuple[int, ...] | None:
    index = 3 if node.op_type.startswith("QLinear") else 1
    shape = node.input_shapes[index] if len(node.input_shapes) > index else None
    return shape if shape else None


def kernel_kind(node: NodeCost, attrs: dict[str, Any]) -> str:
    """``op|dtype|shape-class``: a convolution is ``dw`` (one input channel per group), ``pw`` (1x1)
    or ``k`` (spatial); the dtype is the one it computes in (``int8dyn`` for kernels fed by a
    runtime quantization of their input)."""
    op = node.op_type
    if op in DYNAMIC_INT8:
        dtype = "int8dyn"
    elif op.startswith("QLinear") or op == "QGemm":
        dtype = "int8"
    else:
        dtype = {"float16": "fp16", "float32": "fp32"}.get(node.dtype, node.dtype)
    shape = ""
    if op in CONV_OPS:
        w = _weight_shape(node)
        if w is not None and len(w) > 2:
            groups = int(attrs.get("group", 1))
            shape = "dw" if groups > 1 and w[1] == 1 else "pw" if all(k == 1 for k in w[2:]) else "k"
    return f"{op}|{dtype}|{shape}"


def kernel_features(node: NodeCost, attrs: dict[str, Any]) -> list[float]:
    """One row of ``NODE_FEATURES`` for a node (sizes as log1p)."""
    data_in = node.input_shapes[0] if node.input_shapes else None
    out = node.output_shapes[0] if node.output_shapes else None
    in_elements = math.prod(data_in) if data_in else 0
    in_bytes = sum(math.prod(s) for s in node.input_shapes if s) * itemsize(node.dtype) - node.param_bytes
    kernel_area, stride, groups, c_in, c_out, spatial = 0, 0, 0, 0, 0, 0
    w = _weight_shape(node) if node.op_type in CONV_OPS else None
    if w is not None and len(w) > 2:
        kernel_area = math.prod(w[2:])
        groups = int(attrs.get("group", 1))
        strides = attrs.get("strides") or [1]
        stride = int(max(strides))
    if data_in and len(data_in) >= 2:
        c_in = data_in[1] if len(data_in) >= 3 else data_in[-1]
    if out and len(out) >= 2:
        c_out = out[1] if len(out) >= 3 else out[-1]
        spatial = math.prod(out[2:]) if len(out) >= 3 else out[0]
    fused = 1.0 if attrs.get("activation") else 0.0
    logs = [node.macs, node.elements, in_elements, node.param_bytes, max(in_bytes, 0),
            node.activation_bytes]
    return [*(math.log1p(v) for v in logs), kernel_area, stride, math.log1p(groups),
            math.log1p(c_in), math.log1p(c_out), math.log1p(spatial), len(node.input_shapes), fused]


def itemsize(dtype: str) -> int:
    """Bytes per element of a numpy dtype name (4 for one numpy does not know)."""
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 4


# --- the per-kernel cost model ----------------------------------------------------------------
def _linear_design(x: np.ndarray) -> np.ndarray:
    """Columns of the per-kind linear cost: 1, MACs (millions), bytes moved (MB)."""
    macs = np.expm1(x[:, 0]) * 1e-6
    moved = (np.expm1(x[:, 3]) + np.expm1(x[:, 4]) + np.expm1(x[:, 5])) * 1e-6
    return np.column_stack([np.ones(len(x)), macs, moved])


def nnls_relative(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ||(design @ coef - y) / y|| with coef >= 0 and a little ridge."""
    weighted = design / y[:, None]
    a = np.vstack([weighted, 1e-6 * np.sqrt(len(y)) * np.eye(design.shape[1])])
    b = np.concatenate([np.ones(len(y)), np.zeros(design.shape[1])])
    coef, _ = nnls(a, b, maxiter=50 * design.shape[1])
    return coef


def fit_nodes(
    x: np.ndarray, kinds: Sequence[str], us: np.ndarray, trees: int = 200, seed: int = 0,
) -> dict[str, Any]:
    """Fit the kernel cost model on profiled nodes: ``x`` (nodes x NODE_FEATURES), their kinds and
    measured microseconds. Returns plain JSON parameters (``predict_nodes``)."""
    from sklearn.ensemble import GradientBoostingRegressor

    us = np.maximum(np.asarray(us, dtype=float), 0.05)
    kinds = np.asarray(kinds)
    design = _linear_design(x)
    linear = {"*": nnls_relative(design, us).tolist()}
    for kind in sorted(set(kinds.tolist())):
        mask = kinds == kind
        if mask.sum() >= MIN_KIND_NODES:
            linear[kind] = nnls_relative(design[mask], us[mask]).tolist()
    vocabulary = sorted(linear)
    params: dict[str, Any] = {"linear": linear, "vocabulary": vocabulary}
    base = _linear_predict(params, x, kinds)
    if trees:
        model = GradientBoostingRegressor(
            n_estimators=trees, max_depth=4, learning_rate=0.1, subsample=0.8, min_samples_leaf=5,
            random_state=seed,
        ).fit(_tree_inputs(params, x, kinds), np.log(us / base))
        params["trees"] = {
            "init": float(model.init_.constant_.ravel()[0]), "rate": model.learning_rate,
            "trees": [export_tree(est[0].tree_) for est in model.estimators_],
        }
    return params


def _linear_predict(params: dict[str, Any], x: np.ndarray, kinds: Sequence[str]) -> np.ndarray:
    design = _linear_design(x)
    coef = np.array([params["linear"].get(k, params["linear"]["*"]) for k in kinds]).reshape(len(x), 3)
    return np.maximum(np.sum(design * coef, axis=1), 0.05)


def _tree_inputs(params: dict[str, Any], x: np.ndarray, kinds: Sequence[str]) -> np.ndarray:
    """The trees see the kind (its index in the fitted vocabulary; -1 unseen), the op type's index
    and the kernel features."""
    vocabulary = {k: i for i, k in enumerate(params["vocabulary"])}
    ops = sorted({k.split("|")[0] for k in params["vocabulary"] if k != "*"})
    op_index = {o: i for i, o in enumerate(ops)}
    codes = np.array([[vocabulary.get(k, -1), op_index.get(k.split("|")[0], -1)] for k in kinds], float)
    return np.column_stack([codes.reshape(len(x), 2), x])


def predict_nodes(params: dict[str, Any], k: Kernels) -> np.ndarray:
    """Microseconds predicted for each kernel of ``k``."""
    if not len(k):
        return np.zeros(0)
    base = _linear_predict(params, k.x, k.kinds)
    boost = params.get("trees")
    if not boost:
        return base
    inputs = _tree_inputs(params, k.x, k.kinds)
    correction = boost["init"] + boost["rate"] * sum(tree_predict(t, inputs) for t in boost["trees"])
    return base * np.exp(correction)


def export_tree(tree: Any) -> dict[str, list]:
    """A fitted sklearn tree as plain lists (``tree_predict`` evaluates it)."""
    return {
        "left": tree.children_left.tolist(), "right": tree.children_right.tolist(),
        "feature": tree.feature.tolist(), "threshold": tree.threshold.tolist(),
        "value": tree.value.ravel().tolist(),
    }


def tree_predict(tree: dict[str, list], x: np.ndarray) -> np.ndarray:
    """Evaluate an exported tree on every row of ``x`` at once (level by level)."""
    left, right = np.asarray(tree["left"]), np.asarray(tree["right"])
    feature, threshold = np.asarray(tree["feature"]), np.asarray(tree["threshold"])
    node = np.zeros(len(x), dtype=int)
    rows = np.arange(len(x))
    while True:
        inner = left[node] != -1
        if not inner.any():
            return np.asarray(tree["value"])[node]
        go_left = x[rows, np.maximum(feature[node], 0)] <= threshold[node]
        node = np.where(inner, np.where(go_left, left[node], right[node]), node)


# --- from kernels to a whole model ------------------------------------------------------------
#: Kernel groups of the head, by op type (the rest: ``elem``); each group also splits by dtype.
GROUPS = {
    "conv": CONV_OPS,
    "mm": ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "QGemm", "QLinearMatMul", "MatMulInteger",
           "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "Einsum"),
    "reorder": ("ReorderInput", "ReorderOutput"),
    "quant": ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
    "cast": ("Cast",),
    "move": ("Reshape", "Transpose", "Concat", "QLinearConcat", "Gather", "Slice", "Split", "Squeeze",
             "Unsqueeze", "Flatten", "Expand", "Identity", "Shape", "ConstantOfShape", "Where", "Equal",
             "Less", "Range", "Pad", "Tile", "Resize", "GatherElements", "ScatterND"),
    "norm": ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "Softmax",
             "QLinearSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2", "GlobalAveragePool",
             "QLinearGlobalAveragePool", "MaxPool", "AveragePool", "BiasGelu", "Gelu", "FastGelu", "TopK",
             "ArgMax"),
}
_GROUP_OF = {op: group for group, ops in GROUPS.items() for op in ops}
#: Ridge of the head's least squares (on relative error): keeps rare groups' coefficients small.
HEAD_RIDGE = 1e-3


def kernel_group(kind: str) -> str:
    """``group.dtype`` of a kernel kind (convolutions also by shape class): the head's columns."""
    op, dtype, shape = kind.split("|")
    return f"{_GROUP_OF.get(op, 'elem')}{shape}.{dtype}"


def head_features(groups: Sequence[str], k: Kernels, node_us: np.ndarray) -> np.ndarray:
    """One model's head row: per group, its kernels' predicted seconds, then its kernel count
    (millions), then 1. A group the head was not fitted with counts in the nearest column: its op
    group's first column with the same dtype, else the first column."""
    index = {g: i for i, g in enumerate(groups)}
    row = np.zeros(2 * len(groups) + 1)
    row[-1] = 1.0
    for kind, us in zip(k.kinds, node_us):
        group = kernel_group(kind)
        i = index.get(group)
        if i is None:
            i = next((j for g, j in index.items() if g.split(".")[-1] == group.split(".")[-1]), 0)
        row[i] += us * 1e-6
        row[len(groups) + i] += 1e-6
    return row


def fit_head(
    models: Sequence[Kernels], node_pred: Sequence[np.ndarray], seconds: np.ndarray,
) -> dict[str, Any]:
    """Whole-model seconds from the kernels' predicted times: per kernel group a factor on the
    predicted sum and a cost per kernel (of either sign: the profiler's own time per node, which
    the per-node timings carry and an unprofiled run does not, comes out negative), and a constant
    per run; least squares on relative error with a little ridge."""
    groups = sorted({kernel_group(kind) for k in models for kind in k.kinds})
    x = np.array([head_features(groups, k, p) for k, p in zip(models, node_pred)])
    weighted = x / seconds[:, None]
    a = np.vstack([weighted, HEAD_RIDGE * np.eye(x.shape[1])])
    b = np.concatenate([np.ones(len(seconds)), np.zeros(x.shape[1])])
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    return {"groups": groups, "coef": coef.tolist()}


#: The smallest latency a head predicts (a least-squares head can go below zero far from its data).
MIN_SECONDS = 1e-6


def head_terms(
    head: dict[str, Any], models: Sequence[Kernels], node_pred: Sequence[np.ndarray],
) -> np.ndarray:
    """Each model's head prediction split by kernel group (models x groups, then the constant):
    a group's term is its factor times its kernels' predicted sum plus its per-kernel cost times
    their count. The terms sum to the prediction; a transfer scales them (``fit_group_factors``)."""
    x = np.array([head_features(head["groups"], k, p) for k, p in zip(models, node_pred)])
    coef = np.asarray(head["coef"])
    n = len(head["groups"])
    return np.column_stack([x[:, :n] * coef[:n] + x[:, n:2 * n] * coef[n:2 * n], x[:, -1:] * coef[-1]])


def predict_head(
    head: dict[str, Any], models: Sequence[Kernels], node_pred: Sequence[np.ndarray],
) -> np.ndarray:
    """Whole-model seconds from each model's kernels and their predicted microseconds; with a
    transfer's ``factors`` (group -> factor, ``*`` for the rest), each group's term scaled."""
    terms = head_terms(head, models, node_pred)
    factors = head.get("factors")
    if factors:
        names = [*head["groups"], "constant"]
        terms = terms * np.array([factors.get(g, factors["*"]) for g in names])
    return np.maximum(terms.sum(axis=1), MIN_SECONDS)


#: Ridge pulling each group's transfer factor towards the pooled one (relative-error units: one
#: model 10% off costs 0.01): with 10-20 models, a group factor moves only where the data insist.
TRANSFER_RIDGE = 0.05


def fit_group_factors(terms: np.ndarray, names: Sequence[str], seconds: np.ndarray) -> dict[str, float]:
    """Device B's factor per head term (kernel group, and the constant) from B's whole-model times
    and A's head terms for the same models: non-negative least squares on relative error, each
    factor pulled towards the single factor that fits all terms (``*``) by ``TRANSFER_RIDGE``. A
    group absent from B's models keeps the pooled factor."""
    from scipy.optimize import lsq_linear

    total = terms.sum(axis=1)
    pooled = float(np.sum(total / seconds) / np.sum((total / seconds) ** 2))
    present = np.flatnonzero(np.abs(terms).sum(axis=0) > 0)
    weighted = terms[:, present] / seconds[:, None]
    ridge = math.sqrt(TRANSFER_RIDGE) * np.eye(len(present))
    a = np.vstack([weighted, ridge])
    b = np.concatenate([np.ones(len(seconds)), ridge.diagonal() * pooled])
    fitted = lsq_linear(a, b, bounds=(0, np.inf)).x
    factors = {"*": pooled}
    factors.update({names[i]: float(f) for i, f in zip(present, fitted)})
    return factors
