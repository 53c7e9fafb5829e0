"""One candidate scored on the artifact a device would run.

Accuracy from an onnxruntime session of the final file, latency from the target, size from the file on
disk, MACs and parameters from the torch model.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search.core.errors import CandidateError
from search.task.baseline import Task
from spaces.data import Split
from spaces.sparsity import sparsity_of
from targets import Target
from targets.host import cpu_session
from targets.slot import checkpoint as slot_checkpoint

MB = 1e6

#: ONNX ops whose result for one image depends on the other images of the batch: dynamic quantization
#: takes the activations' scale and zero point from the whole input tensor, so a batch of 128 scores
#: differently from the batch of 1 a device runs.
BATCH_DEPENDENT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})
#: The evaluation batch of graphs whose per-image result does not depend on the batch.
EVAL_BATCH = 128
#: Ops of an integer graph: such files are scored on the CPU provider, the kernels a CPU device runs.
INTEGER_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
}) | BATCH_DEPENDENT_OPS


@dataclass(frozen=True)
class Metrics:
    """What one candidate scored (accuracy on the split it was evaluated on)."""

    accuracy: float
    latency_ms: float
    latency_p90_ms: float
    latency_source: str
    latency_error_pct: float | None  # a prediction's expected error; None when measured
    size_mb: float
    compressed_mb: float
    params: int
    macs: int
    sparsity: float
    latency_low_ms: float | None = None  # a prediction's interval (about 90%); None when measured
    latency_high_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def op_types(graph: onnx.GraphProto) -> set[str]:
    """Every op type of a graph, its subgraphs (If, Loop, Scan) included."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found |= op_types(sub)
    return found


def graph_ops(path: Path) -> set[str]:
    """Every op type of the file's graph, its subgraphs and its local functions."""
    model = onnx.load(str(path), load_external_data=False)
    return op_types(model.graph).union(*(op_types(onnx.helper.make_graph(f.node, f.name, [], []))
                                         for f in model.functions))


def batch_dependent(path: Path) -> bool:
    """Whether the file's per-image output depends on what else is in the batch (see
    ``BATCH_DEPENDENT_OPS``), read from its graph and its local functions."""
    return bool(graph_ops(path) & BATCH_DEPENDENT_OPS)


def eval_batch(path: Path) -> int:
    """The batch that scores the file as a device runs it: 1 where the graph depends on the batch,
    else ``EVAL_BATCH`` (the same per-image results, faster)."""
    return 1 if batch_dependent(path) else EVAL_BATCH


def input_shape(path: Path, default: tuple[int, ...]) -> tuple[int, ...]:
    """The file's input shape at batch 1 (``1 x 3 x S x S``: a ``resolution`` candidate declares its
    own ``S``); ``default`` where the file leaves a spatial axis dynamic."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:  # not an ONNX file: whatever reads it next says so
        return tuple(default)
    if not model.graph.input:
        return tuple(default)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    sides = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims)
    if len(sides) != len(default) or not all(sides[1:]):
        return tuple(default)
    return (1, *sides[1:])


def at_input_size(split: Split, side: object) -> Split:
    """``split`` at the file's input side ``side`` (an int where the file declares one; anything else
    leaves the split as it is)."""
    return split.at_size(side) if isinstance(side, int) and side != split.size else split


def accuracy_session(path: Path) -> ort.InferenceSession:
    """The session that scores the file: onnxruntime's CUDA provider for a float graph where
    ``onnxruntime-gpu`` and a GPU are present (TF32 off, so fp32 stays fp32), else the CPU provider
    with torch's thread count (``--cpus-per-trial``; by default every core). Integer graphs always
    run on the CPU provider: its int8 kernels are the ones a CPU device runs."""
    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    if cuda and not graph_ops(path) & INTEGER_OPS:
        options = {"device_id": torch.cuda.current_device(), "use_tf32": 0}
        return ort.InferenceSession(
            str(path), providers=[("CUDAExecutionProvider", options), "CPUExecutionProvider"]
        )
    return cpu_session(path, threads=torch.get_num_threads())


def onnx_accuracy(
    path: Path, split: Split, batch_size: int | None = None,
    on_rate: Callable[[float], None] | None = None,
) -> float:
    """Top-1 accuracy of the ONNX file in a fresh onnxruntime session (``accuracy_session``), at
    ``eval_batch(path)`` unless told otherwise, reading ``split`` at the file's input size batch by
    batch (images the data could not decode are skipped and counted by the split).
    ``on_rate(images/s)`` follows each chunk of about a thousand images."""
    batch_size = eval_batch(path) if batch_size is None else batch_size
    session = accuracy_session(path)
    name = session.get_inputs()[0].name
    split = at_input_size(split, session.get_inputs()[0].shape[-1])  # the candidate's own size
    correct = seen = reported = 0
    start = time.monotonic()
    for xb, yb in split.batches(max(batch_size, EVAL_BATCH)):  # read in large batches, run at batch_size
        for i in range(0, len(yb), batch_size):
            slot_checkpoint()
            logits = session.run(None, {name: xb[i : i + batch_size].numpy()})[0]
            if not np.isfinite(logits).all():
                raise CandidateError("the model outputs NaN or infinite logits")
            correct += int((logits.argmax(1) == yb[i : i + batch_size].numpy()).sum())
        seen += len(yb)
        if on_rate is not None and seen - reported >= 1000:
            on_rate(seen / max(time.monotonic() - start, 1e-9))
            reported = seen
    if not seen:
        raise CandidateError("no image of the split could be read")
    return correct / seen


def model_cost(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass, counted by torch's own ``FlopCounterMode`` over the
    aten ops that ran (convolutions, matmuls, attention), so factorised, pruned and token-merged
    layers count what they compute."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(example)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def compressed_mb(path: Path) -> float:
    """Size after zlib (level 6): what sparsity and quantization save in storage and download."""
    return len(zlib.compress(path.read_bytes(), 6)) / MB


def evaluate(
    path: Path, model: nn.Module, task: Task, split: Split, target: Target,
    stage: Callable[..., None], accuracy: float | None = None,
) -> Metrics:
    """Accuracy (onnxruntime), latency (target), size (disk) of the artifact; ``stage(name, kind)``
    announces each step. ``accuracy``: this file's accuracy on ``split``, where it was already scored
    (a successive-halving rung), so it is not scored twice."""
    if accuracy is None:
        stage("accuracy", "accuracy")
        accuracy = onnx_accuracy(
            path, split, on_rate=lambda rate: stage(f"accuracy ({rate:,.0f} images/s)", "accuracy")
        )
    stage("latency", "latency")
    shape = input_shape(path, task.input_shape)
    latency = target.latency(path, shape)
    stage("size and MACs", "other")
    macs, params = model_cost(model, at_input_size(task.data.train, shape[-1]).images(1))
    return Metrics(
        accuracy=accuracy,
        latency_ms=latency.median_ms,
        latency_p90_ms=latency.p90_ms,
        latency_source=latency.source,
        latency_error_pct=latency.error_pct,
        latency_low_ms=latency.low_ms,
        latency_high_ms=latency.high_ms,
        size_mb=path.stat().st_size / MB,
        compressed_mb=compressed_mb(path),
        params=int(params),
        macs=int(macs),
        sparsity=sparsity_of(model),
    )
