"""``edgepareto bench peers RUN``: what a user could do instead of compressing: train a smaller model of
the same family from scratch, with the baseline's recipe, on the same data.

Each peer (timm's smaller variants of the run's model family, ``PEERS``) is trained and cached exactly
as a baseline is (``search.task.baseline.prepare``: the family's epochs, rate and augmentation, the
run's data, split and seed), then exported twice: fp32, and post-training static int8 (onnxruntime,
per channel), the quantization a user would apply to it. Its test accuracy is that of the file in
onnxruntime; its latency is timed on the host side by side with the run's Pareto models (one
interleaved measurement of every file). A peer is dominated when some front model is at least as
accurate on test, no slower and no larger.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from search.candidate.build import build
from search.candidate.evaluate import input_shape, onnx_accuracy
from search.core.errors import UserError
from search.front.finalize import side_by_side
from search.front.run import load_run
from search.task.baseline import prepare
from spaces import Candidate, Context, Step
from targets import create_target

#: Model name prefix -> timm's smaller variants of that architecture, smallest first.
PEERS: dict[str, tuple[str, ...]] = {
    "resnet": ("resnet10t", "resnet14t"),
    "mobilenetv3": ("mobilenetv3_small_050", "mobilenetv3_small_100"),
    "mobilenetv2": ("mobilenetv2_050", "mobilenetv2_075"),
    "efficientnet": ("tinynet_e", "tinynet_c"),
}


def peers_of(model: str) -> tuple[str, ...]:
    """``PEERS`` of the first prefix ``model`` starts with (empty when none)."""
    return next((v for k, v in PEERS.items() if model.startswith(k)), ())
INT8 = Step("quantize", {"mode": "static", "per_channel": True, "calibration": "minmax", "ops": "all",
                         "keep_float": 0.0})


def dominated_by(row: pd.Series, front: pd.DataFrame) -> str:
    """The front trials at least as accurate (test), no slower and no larger than ``row``, comma
    separated ("" when none: the front does not dominate it)."""
    beats = front[
        (front["test_accuracy"] >= row["test_accuracy"]) & (front["latency_ms"] <= row["latency_ms"])
        & (front["size_mb"] <= row["size_mb"])
    ]
    return ", ".join(str(int(t)) for t in beats["trial"])


def bench_peers(
    run: str | Path, peers: Sequence[str] | None = None, log: Callable[[str], None] = print,
    threads: int = 1, repeats: int = 50,
) -> pd.DataFrame:
    """One row per front model of ``run`` and per peer (fp32 and int8): test accuracy, latency timed
    side by side on the host, size; for the peers, the front trials that dominate them."""
    report = load_run(run)
    cfg = report.config
    runs_root = report.run_dir.parent
    front = report.pareto
    model = str(front["model"].iloc[0])
    names = tuple(peers) if peers else peers_of(model)
    if not names:
        raise UserError(f"no smaller variants known for {model}; name them with --model")
    rows = [{
        "kind": "front", "model": r["model"], "trial": int(r["trial"]), "techniques": r["techniques"],
        "test_accuracy": float(r["test_accuracy"]), "size_mb": float(r["size_mb"]),
    } for _, r in front.iterrows()]
    artifacts = report.trials.set_index("trial")["artifact"]
    paths = [report.run_dir / artifacts[int(t)] for t in front["trial"]]
    run_shape = tuple(report.summary["preprocessing"]["input_shape"])  # the run's size (summary.json)
    shapes = [input_shape(p, run_shape) for p in paths]
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for name in names:
            task = prepare(replace(cfg, model=name), name, runs_root, log, log)
            ctx = Context(train=task.data.train, seed=cfg.seed, batch_size=cfg.batch_size)
            for label, steps in (("fp32", ()), ("int8", (INT8,))):
                path, _ = build(Candidate(steps), task, Path(tmp) / f"{name}-{label}", ctx, lambda *_: None)
                rows.append({
                    "kind": "peer", "model": name, "trial": None, "techniques": f"from scratch, {label}",
                    "test_accuracy": onnx_accuracy(path, task.data.test),
                    "size_mb": path.stat().st_size / 1e6,
                })
                paths.append(path)
                shapes.append(input_shape(path, task.input_shape))
        log(f"timing {len(paths)} files side by side")
        latencies = side_by_side(create_target("host", threads=threads, repeats=repeats), paths, shapes)
    table = pd.DataFrame(rows)
    table["latency_ms"] = [lat.median_ms for lat in latencies]
    ours = table[table["kind"] == "front"]
    table["dominated_by"] = [
        dominated_by(r, ours) if r["kind"] == "peer" else "" for _, r in table.iterrows()
    ]
    return table


def format_peers(table: pd.DataFrame) -> str:
    lines = [table.to_string(index=False, formatters={
        "test_accuracy": "{:.4f}".format, "size_mb": "{:.2f}".format, "latency_ms": "{:.3f}".format,
    })]
    peers = table[table["kind"] == "peer"]
    beaten = int((peers["dominated_by"] != "").sum())
    lines.append(f"the front dominates {beaten} of {len(peers)} peer files")
    return "\n".join(lines)
