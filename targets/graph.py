"""ONNX graph analysis: per-node op type, shapes, MACs, parameter and activation bytes, dtype.

Shapes come from shape inference after the symbolic batch axis is fixed; MACs are counted
for the ops that multiply and accumulate (Conv, Gemm, MatMul, Einsum and their integer and QLinear
forms); everything else counts its output elements. The peak activation memory is estimated by
walking the nodes in graph order and keeping every tensor alive until its last reader has run.
Needs only ``onnx``, ``onnxruntime`` and ``numpy``, so it can run beside the device agent.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, shape_inference
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

CONV_OPS = ("Conv", "ConvInteger", "QLinearConv", "FusedConv")
MATMUL_OPS = (
    "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
)
GEMM_OPS = ("Gemm", "FusedGemm", "QGemm")
#: Where the data operand(s) sit among a node's inputs (QLinear ops interleave scales and zero points).
DATA_INPUTS = {"QLinearConv": (0, 3), "QLinearMatMul": (0, 3), "QGemm": (0, 3)}


@dataclass(frozen=True)
class NodeCost:
    """One node: what it is, its shapes, and what it costs."""

    name: str
    op_type: str
    input_shapes: tuple[tuple[int, ...] | None, ...]
    output_shapes: tuple[tuple[int, ...] | None, ...]
    dtype: str  # element type of the first output
    macs: int
    param_bytes: int  # initializers this node reads
    activation_bytes: int  # bytes of the outputs it writes (0 for outputs computed from weights alone)
    elements: int  # output elements (the work of elementwise ops)


@dataclass(frozen=True)
class GraphCost:
    """A whole model: its nodes and their totals."""

    nodes: tuple[NodeCost, ...]
    macs: int
    param_bytes: int  # every initializer once
    activation_bytes: int
    peak_activation_bytes: int
    op_counts: dict[str, int]
    dtypes: tuple[str, ...]

    def macs_by_op(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for n in self.nodes:
            out[n.op_type] += n.macs
        return dict(out)


def analyze(model: onnx.ModelProto | str | Path, batch: int = 1) -> GraphCost:
    """Analyse an ONNX model (or file) at the given batch size."""
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    fixed = _fixed_batch(proto, batch)
    graph = infer_shapes(fixed).graph
    inits = {t.name: t for t in graph.initializer}
    info = {v.name: v.type.tensor_type for v in [*graph.input, *graph.value_info, *graph.output]}
    shapes = {name: _shape(t) for name, t in info.items()}
    elem = {name: t.elem_type for name, t in info.items()}
    for name, t in inits.items():
        shapes[name], elem[name] = tuple(t.dims), t.data_type
    missing = [x for node in graph.node for x in node.output if x and shapes.get(x) is None]
    if missing:  # shape inference gave up somewhere (an op it does not know): run the graph once
        for name, (shape, elem_type) in runtime_shapes(fixed, missing).items():
            shapes[name], elem[name] = shape, elem_type

    constant = set(inits)  # initializers, and what nodes compute from them alone (QDQ weights)
    for node in graph.node:
        if node.op_type == "Constant" or all(x in constant for x in node.input if x):
            constant.update(node.output)
    nodes = []
    for i, node in enumerate(graph.node):
        ins = tuple(shapes.get(x) if x else None for x in node.input)
        outs = tuple(shapes.get(x) for x in node.output)
        out_type = elem.get(node.output[0], onnx.TensorProto.UNDEFINED) if node.output else 0
        nodes.append(NodeCost(
            name=node.name or f"{node.op_type}_{i}",
            op_type=node.op_type,
            input_shapes=ins,
            output_shapes=outs,
            dtype=helper.tensor_dtype_to_np_dtype(out_type).name if out_type else "undefined",
            macs=node_macs(node, ins, outs),
            param_bytes=sum(_nbytes(inits[x].dims, inits[x].data_type) for x in node.input if x in inits),
            activation_bytes=sum(
                _nbytes(s, elem.get(x, 0)) for x, s in zip(node.output, outs) if x not in constant
            ),
            elements=sum(math.prod(s) for s in outs if s is not None),
        ))
    sizes = {name: _nbytes(s, elem.get(name, 0)) for name, s in shapes.items() if name not in constant}
    return GraphCost(
        nodes=tuple(nodes),
        macs=sum(n.macs for n in nodes),
        param_bytes=sum(_nbytes(t.dims, t.data_type) for t in inits.values()),
        activation_bytes=sum(n.activation_bytes for n in nodes),
        peak_activation_bytes=peak_activation_bytes(graph, sizes),
        op_counts=dict(Counter(n.op_type for n in nodes)),
        dtypes=tuple(sorted({n.dtype for n in nodes})),
    )


def node_macs(
    node: onnx.NodeProto,
    ins: tuple[tuple[int, ...] | None, ...],
    outs: tuple[tuple[int, ...] | None, ...],
) -> int:
    """Multiply-accumulates of one node (0 for ops that do not multiply-accumulate, or unknown shapes)."""
    op = node.op_type
    first, second = DATA_INPUTS.get(op, (0, 1))
    a = ins[first] if len(ins) > first else None
    b = ins[second] if len(ins) > second else None
    out = outs[0] if outs else None
    if op in CONV_OPS and b is not None and out is not None:
        # out: N, C_out, *spatial; weight: C_out, C_in / group, *kernel
        return math.prod(out) * math.prod(b[1:])
    if op in MATMUL_OPS and a is not None and out is not None:
        return math.prod(out) * a[-1]
    if op in GEMM_OPS and a is not None and out is not None:
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return math.prod(out) * (a[0] if trans_a else a[-1])
    if op == "Einsum":
        return _einsum_macs(node, ins)
    return 0


def peak_activation_bytes(graph: onnx.GraphProto, sizes: dict[str, int]) -> int:
    """Largest sum of live tensors while the nodes run in graph order: a tensor lives from the node
    that writes it (or the start, for graph inputs) to its last reader (or the end, for outputs)."""
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for x in node.input:
            last_use[x] = i
    end = len(graph.node)
    for out in graph.output:
        last_use[out.name] = end
    live = {x.name: sizes.get(x.name, 0) for x in graph.input if x.name in sizes}
    peak = sum(live.values())
    for i, node in enumerate(graph.node):
        for x in node.output:
            live[x] = sizes.get(x, 0)
        peak = max(peak, sum(live.values()))
        for x in list(live):
            if last_use.get(x, -1) <= i:
                del live[x]
    return peak


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic shape inference, which follows shape arithmetic (a class token
    expanded to the batch) where ``onnx.shape_inference`` stops; onnx's as the fallback."""
    try:
        return _symbolic(model)
    except Exception:  # an op it does not know: the plain inference still gives most shapes
        return shape_inference.infer_shapes(model, data_prop=True)


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """``SymbolicShapeInference.infer_shapes`` without its side effect: when inference is
    incomplete, onnxruntime's own function saves ``sym_shape_infer_temp.onnx`` and its external
    data into the current directory. Here a partial result is returned instead (the missing shapes
    come from ``runtime_shapes``)."""
    inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
    inference._preprocess(model)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_


def runtime_shapes(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple[tuple[int, ...], int]]:
    """Shapes and element types of ``names`` from one onnxruntime run on random inputs (every
    tensor exposed as an output, graph optimizations off so that each one still exists)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    del probe.graph.output[:]
    probe.graph.output.extend(helper.ValueInfoProto(name=n) for n in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # cannot run (a custom op): keep what inference found
        return {}
    rng = np.random.default_rng(0)
    initializers = {t.name for t in graph.initializer}
    feed = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        shape = _shape(value.type.tensor_type) or ()
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feed[value.name] = rng.standard_normal(shape).astype(dtype)
    arrays = session.run(names, feed)
    return {
        n: (tuple(a.shape), helper.np_dtype_to_tensor_dtype(a.dtype)) for n, a in zip(names, arrays)
    }


def optimized(model: str | Path, batch: int = 1) -> onnx.ModelProto:
    """The graph onnxruntime actually runs: its portable fusions applied (``ORT_ENABLE_EXTENDED``:
    Conv+activation, MatMul+Add, GELU, LayerNorm, QDQ pairs into integer kernels, fp16 casts), but
    none of the layout changes specific to this CPU, so it stands for the graph on any device."""
    fixed = _fixed_batch(onnx.load(str(model)), batch)
    with tempfile.TemporaryDirectory(prefix="edgepareto-opt-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        ort.InferenceSession(fixed.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(out))


def _fixed_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose symbolic input dimensions are ``batch``, so that shapes infer to numbers."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = batch
    return copy


def _shape(tensor_type: onnx.TypeProto.Tensor) -> tuple[int, ...] | None:
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def _nbytes(shape: tuple[int, ...] | None, elem_type: int) -> int:
    if shape is None or not elem_type:
        return 0
    return math.prod(shape) * np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _einsum_macs(node: onnx.NodeProto, ins: tuple[tuple[int, ...] | None, ...]) -> int:
    """A contraction's MACs: the product of every index's size (``bij,bjk->bik``: b*i*j*k)."""
    equation = next((attr.s.decode() for attr in node.attribute if attr.name == "equation"), "")
    operands = equation.replace(" ", "").split("->")[0].split(",")
    size: dict[str, int] = {}
    for letters, shape in zip(operands, ins):
        if shape is None or "." in letters or len(letters) != len(shape):
            return 0
        size.update(zip(letters, shape))
    return math.prod(size.values()) if size else 0


def format_cost(cost: GraphCost, per_node: bool = False) -> str:
    """Totals, then a table per op type (or per node)."""
    mb = 1e6
    lines = [
        f"MACs {cost.macs / 1e6:.2f} M, parameters {cost.param_bytes / mb:.3f} MB, "
        f"activations written {cost.activation_bytes / mb:.3f} MB, "
        f"peak activations {cost.peak_activation_bytes / mb:.3f} MB, dtypes {', '.join(cost.dtypes)}",
    ]
    if per_node:
        for n in cost.nodes:
            shape = "x".join(map(str, n.output_shapes[0])) if n.output_shapes and n.output_shapes[0] else "?"
            lines.append(f"{n.name:<40} {n.op_type:<18} {shape:<18} {n.dtype:<8} MACs {n.macs:>12,}")
        return "\n".join(lines)
    macs = cost.macs_by_op()
    for op, count in sorted(cost.op_counts.items(), key=lambda kv: (-macs.get(kv[0], 0), kv[0])):
        lines.append(f"{op:<22} x{count:<5} MACs {macs.get(op, 0):>14,}")
    return "\n".join(lines)
