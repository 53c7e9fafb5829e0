"""``edgepareto bench techniques --mixed-precision``: our ``quantize.keep_float`` against NNCF's
``quantize_with_accuracy_control`` on the same trained baseline.

Both keep the layers that quantization hurts most in float. NNCF runs a fixed loop: quantize, then
revert layers one by one (ranked on validation) until the accuracy drop is within ``max_drop``.
``keep_float`` is a searched share of layers, ranked by how much the output error on calibration
images falls when each alone stays float in the int8 graph.
Every file is scored the same way: validation and test accuracy in onnxruntime, size, the weighted
layers left float, and host latency timed side by side.

NNCF is a benchmark-only dependency (``pip install -e '.[nncf]'``), imported here and nowhere else.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd

from search.bench.techniques import timed_table
from search.candidate.build import build
from search.candidate.evaluate import input_shape, onnx_accuracy
from search.config.run_config import RunConfig
from search.core.errors import UserError
from search.task.baseline import prepare, task_context
from spaces import Candidate, Step
from spaces.data import Split
from spaces.quantize import CALIBRATION_IMAGES, WEIGHTED_OPS
from targets.host import cpu_session

_STATIC = {"mode": "static", "per_channel": True, "calibration": "minmax", "ops": "all"}
#: Our settings: plain static int8 and three shares of the most sensitive layers kept float.
KEEP_FLOAT = (0.0, 0.1, 0.25, 0.5)


def float_layers(path: Path) -> tuple[int, int]:
    """(weighted layers whose weight is not dequantized from int8, weighted layers) of an ONNX file:
    how much of the graph a mixed-precision file left in float."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    weighted = [n for n in graph.node if n.op_type in WEIGHTED_OPS]
    dequantized = sum(
        1 for n in weighted if len(n.input) > 1 and producer.get(n.input[1]) == "DequantizeLinear"
    )
    return len(weighted) - dequantized, len(weighted)


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as err:
        raise UserError(
            f"bench techniques --mixed-precision compares with NNCF, which is not installed ({err}): "
            "pip install -e '.[nncf]'"
        ) from None
    return nncf


def _samples(split: Split, size: int) -> list[tuple[np.ndarray, int]]:
    """The split at ``size`` px as (1 x 3 x S x S image, label) items: NNCF ranks layers per item."""
    items = []
    for xb, yb in split.at_size(size).batches(64):
        items += [(x[None].numpy().astype(np.float32), int(y)) for x, y in zip(xb, yb)]
    return items


def _top1(model: onnx.ModelProto, items: Iterable[tuple[np.ndarray, int]]) -> tuple[float, list[float]]:
    """NNCF's ``validation_fn``: top-1 accuracy in onnxruntime (one CPU thread, batch 1) and each
    item's correctness, which NNCF uses to rank the layers it reverts."""
    with tempfile.TemporaryDirectory(prefix="nncf-val-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        session = cpu_session(path, threads=1)
        name = session.get_inputs()[0].name
        hits = [float(session.run(None, {name: x})[0].argmax() == y) for x, y in items]
    return (float(np.mean(hits)) if hits else 0.0), hits


def nncf_quantize(
    src: Path, dst: Path, calibration: Split, validation: Split | None = None, max_drop: float = 0.01,
) -> Path:
    """NNCF's post-training int8 of the fp32 file ``src`` (ONNX backend, its defaults, calibrated on
    ``CALIBRATION_IMAGES`` training images); with ``validation``, its accuracy-control loop instead,
    reverting layers until the top-1 drop on ``validation`` is at most ``max_drop`` (absolute)."""
    nncf = _nncf()
    model = onnx.load(str(src))
    name = model.graph.input[0].name
    size = input_shape(src, (1, 3, calibration.size, calibration.size))[-1]
    calib = [x for x, _ in _samples(calibration.subset(CALIBRATION_IMAGES), size)]
    calib_set = nncf.Dataset(calib, lambda x: {name: x})
    if validation is None:
        quantized = nncf.quantize(model, calib_set, subset_size=len(calib))
    else:
        val = _samples(validation, size)
        quantized = nncf.quantize_with_accuracy_control(
            model, calib_set, nncf.Dataset(val, lambda item: {name: item[0]}), _top1,
            max_drop=max_drop, subset_size=len(calib),
        )
    onnx.save(quantized, str(dst))
    return dst


def bench_mixed_precision(
    cfg: RunConfig, runs_root: Path, log: Callable[[str], None] = print, max_drop: float = 0.01,
    threads: int = 1, repeats: int = 50,
) -> pd.DataFrame:
    """One row per method on ``cfg``'s trained baseline (cached like a search's): fp32, our static
    int8 with each share of ``KEEP_FLOAT``, NNCF's plain int8 and NNCF's accuracy control at
    ``max_drop``; accuracy in onnxruntime, size, float layers, build time and side-by-side latency."""
    _nncf()  # the one-line error before a baseline is trained
    task = prepare(cfg, cfg.models[0], runs_root, log, log)
    ctx = task_context(task, cfg)
    rows, paths = [], []
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as tmp:

        def record(method: str, make: Callable[[Path], Path]) -> None:
            log(method)
            out = Path(tmp) / f"{len(paths):02d}"
            out.mkdir()
            started = time.monotonic()
            path = make(out)
            kept, weighted = float_layers(path)
            rows.append({
                "method": method, "float_layers": f"{kept}/{weighted}",
                "val_accuracy": onnx_accuracy(path, task.data.val),
                "test_accuracy": onnx_accuracy(path, task.data.test),
                "size_mb": path.stat().st_size / 1e6, "build_s": time.monotonic() - started,
            })
            paths.append(path)

        def ours(share: float) -> Callable[[Path], Path]:
            step = Step("quantize", {**_STATIC, "keep_float": share})
            return lambda out: build(Candidate((step,)), task, out, ctx, lambda *_stage: None)[0]

        fp32 = build(Candidate(()), task, Path(tmp), ctx, lambda *_stage: None)[0]
        record("fp32", lambda _out: fp32)
        for share in KEEP_FLOAT:
            record("int8 static (ours)" if share == 0 else f"int8, {share:.0%} float (ours keep_float)",
                   ours(share))
        record("NNCF int8", lambda out: nncf_quantize(fp32, out / "model.onnx", task.data.train))
        record(f"NNCF accuracy control ({max_drop:.0%} drop)", lambda out: nncf_quantize(
            fp32, out / "model.onnx", task.data.train, task.data.val, max_drop))
        table = timed_table(rows, paths, task.input_shape, threads, repeats)
    return table
