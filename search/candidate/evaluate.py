"""One candidate scored on the artifact a device would run.

Accuracy from an onnxruntime session of the final file, latency from the target, size from the file on
disk, MACs and parameters from the torch model.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from search.core.errors import CandidateError
from search.task.baseline import Task
from search.task.data import Split
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


def batch_dependent(path: Path) -> bool:
    """Whether the file's per-image output depends on what else is in the batch (see
    ``BATCH_DEPENDENT_OPS``), read from its graph and its local functions."""
    model = onnx.load(str(path), load_external_data=False)
    ops = op_types(model.graph).union(*(op_types(onnx.helper.make_graph(f.node, f.name, [], []))
                                        for f in model.functions))
    return bool(ops & BATCH_DEPENDENT_OPS)


def eval_batch(path: Path) -> int:
    """The batch that scores the file as a device runs it: 1 where the graph depends on the batch,
    else ``EVAL_BATCH`` (the same per-image results, faster)."""
    return 1 if batch_dependent(path) else EVAL_BATCH


def onnx_accuracy(path: Path, split: Split, batch_size: int | None = None) -> float:
    """Top-1 accuracy of the ONNX file in a fresh onnxruntime session, with torch's thread count
    (``--cpus-per-trial``; by default every core), at ``eval_batch(path)`` unless told otherwise."""
    batch_size = eval_batch(path) if batch_size is None else batch_size
    session = cpu_session(path, threads=torch.get_num_threads())
    name = session.get_inputs()[0].name
    x = split.x.numpy()
    correct = 0
    for i in range(0, len(x), batch_size):
        slot_checkpoint()
        logits = session.run(None, {name: x[i : i + batch_size]})[0]
        if not np.isfinite(logits).all():
            raise CandidateError("the model outputs NaN or infinite logits")
        correct += int((logits.argmax(1) == split.y.numpy()[i : i + batch_size]).sum())
    return correct / len(x)


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
    stage: Callable[[str], None],
) -> Metrics:
    """Accuracy (onnxruntime), latency (target), size (disk) of the artifact."""
    stage("accuracy")
    accuracy = onnx_accuracy(path, split)
    stage("latency")
    latency = target.latency(path, task.input_shape)
    macs, params = model_cost(model, task.data.train.x[:1])
    return Metrics(
        accuracy=accuracy,
        latency_ms=latency.median_ms,
        latency_p90_ms=latency.p90_ms,
        latency_source=latency.source,
        latency_error_pct=latency.error_pct,
        size_mb=path.stat().st_size / MB,
        compressed_mb=compressed_mb(path),
        params=int(params),
        macs=int(macs),
        sparsity=sparsity_of(model),
    )
