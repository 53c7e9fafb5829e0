"""``edgepareto bench techniques``: each ViT technique alone, measured side by side on one model;
with ``--quantization``, QAT against post-training quantization on a trained baseline.

Latency, MACs, parameters and size of every setting, with untrained weights (latency does not depend
on the weights' values), on the target's onnxruntime session, interleaved so that every setting sees
the same machine conditions. Accuracy is the search's business, not this table's.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from search.calibrate.candidates import untrained_task
from search.candidate.build import build
from search.candidate.evaluate import input_shape, model_cost, onnx_accuracy
from search.config.run_config import RunConfig
from search.front.finalize import side_by_side
from search.task.baseline import prepare, task_context
from spaces import Candidate, Step
from targets import create_target

_INT8 = {"per_channel": True, "ops": "matmul"}
_HEADS_THIRD = Step("vit_prune", {"head_ratio": 0.34, "mlp_ratio": 0.5, "importance": "l2"})
#: Setting name -> technique chain. Moderate and strong settings of each ViT family.
VIT_SETTINGS: dict[str, tuple[Step, ...]] = {
    "baseline (fp32)": (),
    "heads 1/3 + MLP 50%": (_HEADS_THIRD,),
    "heads 2/3 + MLP 75%": (Step("vit_prune", {"head_ratio": 0.67, "mlp_ratio": 0.75, "importance": "l2"}),),
    "embedding 25%": (Step("vit_embed", {"ratio": 0.25, "importance": "l2"}),),
    "low-rank qkv/fc1/fc2 50%": (
        Step("vit_lowrank", {"qkv": 0.5, "proj": 1.0, "fc1": 0.5, "fc2": 0.5}),
    ),
    "tokens 15%/block from 1/4 depth": (Step("tokens", {"ratio": 0.15, "start": 0.25}),),
    "tokens 25%/block from the start": (Step("tokens", {"ratio": 0.25, "start": 0.0}),),
    "int8 dynamic, MatMul only": (Step("quantize", {"mode": "dynamic", **_INT8}),),
    "int8 dynamic, all ops": (Step("quantize", {"mode": "dynamic", "per_channel": True, "ops": "all"}),),
    "int8 static QDQ, MatMul only": (
        Step("quantize", {"mode": "static", "calibration": "minmax", **_INT8}),
    ),
    "fp16": (Step("quantize", {"mode": "fp16"}),),
    "heads 1/3 + MLP 50% + int8 dynamic": (_HEADS_THIRD, Step("quantize", {"mode": "dynamic", **_INT8})),
}


def bench_techniques(
    model: str = "vit_tiny_patch16_224", img_size: int = 32, threads: int = 1, repeats: int = 50
) -> pd.DataFrame:
    """One row per setting of ``VIT_SETTINGS``; speed-up and size ratios against the baseline."""
    task, ctx = untrained_task(model, img_size)
    data = task.data
    target = create_target("host", threads=threads, repeats=repeats)
    rows, paths = [], []
    with tempfile.TemporaryDirectory(prefix="bench-techniques-") as tmp:
        for i, (name, steps) in enumerate(VIT_SETTINGS.items()):
            out = Path(tmp) / f"{i:02d}"
            out.mkdir()
            path, compressed = build(Candidate(steps), task, out, ctx, lambda *_stage: None)
            macs, params = model_cost(compressed, data.train.images(1))
            rows.append({"setting": name, "macs_m": macs / 1e6, "params_m": params / 1e6,
                         "size_mb": path.stat().st_size / 1e6})
            paths.append(path)
        latencies = side_by_side(target, paths, [input_shape(p, task.input_shape) for p in paths])
    table = pd.DataFrame(rows)
    table["latency_ms"] = [lat.median_ms for lat in latencies]
    table["speedup"] = table["latency_ms"].iloc[0] / table["latency_ms"]
    return table


def format_techniques(table: pd.DataFrame) -> str:
    return table.to_string(index=False, formatters={
        "macs_m": "{:.1f}".format, "params_m": "{:.3f}".format, "size_mb": "{:.2f}".format,
        "latency_ms": "{:.3f}".format, "speedup": "{:.2f}x".format,
    })


_RECOVERY = Step("distill", {"epochs": 2, "temperature": 4.0, "alpha": 0.5})
_STATIC = {"mode": "static", "per_channel": True, "calibration": "minmax", "ops": "all"}
#: Structure name -> the torch steps before quantization (the same for every method).
QUANT_STRUCTURES: dict[str, tuple[Step, ...]] = {
    "whole": (),
    "pruned 50%": (
        Step("prune", {"ratio": 0.5, "importance": "l2", "scope": "uniform", "residual": "prune"}),
    ),
}
#: Method name -> the steps around the structure: float, post-training static int8 (onnxruntime),
#: the same with the most sensitive quarter of the layers kept float, and quantization-aware training.
#: Every method gets the same recovery fine-tuning (2 epochs of distillation).
QUANT_METHODS: dict[str, tuple[tuple[Step, ...], tuple[Step, ...]]] = {
    "fp32": ((), (_RECOVERY,)),
    "PTQ static int8": ((), (_RECOVERY, Step("quantize", {**_STATIC, "keep_float": 0.0}))),
    "PTQ int8, 25% float": ((), (_RECOVERY, Step("quantize", {**_STATIC, "keep_float": 0.25}))),
    "QAT int8": ((Step("qat", {"per_channel": True, "activations": "full", "lr_scale": 0.1}),), (_RECOVERY,)),
}


def bench_quantization(
    cfg: RunConfig, runs_root: Path, log: Callable[[str], None] = print, threads: int = 1, repeats: int = 50,
) -> pd.DataFrame:
    """QAT against post-training quantization on the same candidates of ``cfg``'s trained baseline
    (cached like a search's): each structure of ``QUANT_STRUCTURES`` with each method of
    ``QUANT_METHODS``, the exported file's validation and test accuracy in onnxruntime, its size,
    and its latency on the host, timed side by side with the others."""
    name = cfg.models[0]
    task = prepare(cfg, name, runs_root, log, log)
    ctx = task_context(task, cfg)
    rows, paths = [], []
    with tempfile.TemporaryDirectory(prefix="bench-quantization-") as tmp:
        for s, (structure, steps) in enumerate(QUANT_STRUCTURES.items()):
            for m, (method, (before, after)) in enumerate(QUANT_METHODS.items()):
                log(f"{structure} / {method}")
                started = time.monotonic()
                candidate = Candidate((*steps, *before, *after))
                path, _ = build(candidate, task, Path(tmp) / f"{s}-{m}", ctx, lambda *_stage: None)
                rows.append({
                    "structure": structure, "method": method,
                    "val_accuracy": onnx_accuracy(path, task.data.val),
                    "test_accuracy": onnx_accuracy(path, task.data.test),
                    "size_mb": path.stat().st_size / 1e6, "build_s": time.monotonic() - started,
                })
                paths.append(path)
        table = timed_table(rows, paths, task.input_shape, threads, repeats)
    return table


def timed_table(
    rows: list[dict], paths: list[Path], default_shape: tuple[int, ...], threads: int, repeats: int,
) -> pd.DataFrame:
    """``rows`` (one per file of ``paths``) with each file's host latency, timed side by side at
    the input size the file declares."""
    target = create_target("host", threads=threads, repeats=repeats)
    latencies = side_by_side(target, paths, [input_shape(p, default_shape) for p in paths])
    table = pd.DataFrame(rows)
    table["latency_ms"] = [lat.median_ms for lat in latencies]
    return table


def format_quantization(table: pd.DataFrame) -> str:
    """The accuracy/size/latency table of ``bench_quantization`` and ``bench_mixed_precision``."""
    return table.to_string(index=False, formatters={
        "val_accuracy": "{:.4f}".format, "test_accuracy": "{:.4f}".format, "size_mb": "{:.2f}".format,
        "build_s": "{:.0f}".format, "latency_ms": "{:.3f}".format,
    })
