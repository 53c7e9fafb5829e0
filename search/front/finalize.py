"""The end of a search: the Pareto front re-evaluated on the test split, as tables and files.

Writes ``trials.csv`` (every trial, validation metrics), ``pareto.csv`` (the front plus the baseline,
test metrics, latency re-measured side by side) and ``summary.json`` into the run folder.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial, TrialState

from search.candidate.build import INPUT_NAME
from search.candidate.evaluate import eval_batch, input_shape, onnx_accuracy
from search.config.objectives import directions as objective_directions
from search.config.run_config import RunConfig
from search.core.atomic import write_json, write_with
from search.core.errors import UserError
from search.front.counts import frame_counts
from search.front.pareto import pareto_front
from search.front.run import Report
from search.front.trials import trials_frame
from search.study.constraints import DUPLICATE_ATTR, MODEL_ATTR, baseline_trial, is_feasible
from search.study.progress import Progress
from search.task.baseline import Task
from search.task.preprocess import SQUASH, Preprocess
from targets import Latency, Target
from targets.latency import LatencyPlan

#: Final latencies: this many interleaved passes over baseline and front, median of their medians.
PASSES = 3




def front_trials(study: optuna.Study, objectives: tuple[str, ...]) -> list[FrozenTrial]:
    """Feasible complete trials that no other feasible trial dominates (on validation values); a
    duplicate counts as its twin, which is there already."""
    done = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if is_feasible(t) and DUPLICATE_ATTR not in t.user_attrs
    ]
    directions = objective_directions(objectives)
    return [done[i] for i in pareto_front([t.values for t in done], directions)]


def finalize(
    study: optuna.Study, cfg: RunConfig, tasks: Mapping[str, Task], plan: LatencyPlan, run_dir: Path,
    progress: Progress,
) -> Report:
    """Write the tables. Speed-ups and drops are relative to the first model's baseline."""
    trials = trials_frame(study)
    write_with(run_dir / "trials.csv", lambda tmp: trials.to_csv(tmp, index=False))
    all_trials = study.get_trials(deepcopy=False)
    reference = next(iter(tasks))
    baselines = [b for m in tasks if (b := baseline_trial(all_trials, m)) is not None]
    if not baselines or baselines[0].user_attrs[MODEL_ATTR] != reference:
        raise UserError(f"run {cfg.name} has no completed baseline trial yet; resume it")
    front = front_trials(study, cfg.objectives)
    progress.log(f"pareto front: {len(front)} trial(s); re-evaluating on the test split")
    baseline_numbers = {b.number for b in baselines}
    chosen = baselines + [t for t in front if t.number not in baseline_numbers]
    models = [t.user_attrs[MODEL_ATTR] for t in chosen]
    paths = [run_dir / t.user_attrs["artifact"] for t in chosen]
    test_acc = [onnx_accuracy(p, tasks[m].data.test) for p, m in zip(paths, models)]
    shapes = [input_shape(p, tasks[m].input_shape) for p, m in zip(paths, models)]  # each its own size
    latencies = side_by_side(plan.final, paths, shapes)
    rows = []
    front_numbers = {t.number for t in front}
    for t, model, path, acc, latency in zip(chosen, models, paths, test_acc, latencies):
        a = t.user_attrs
        rows.append({
            "trial": t.number,
            "model": model,
            "role": "pareto" if t.number not in baseline_numbers
            else "baseline+pareto" if t.number in front_numbers else "baseline",
            "techniques": a["techniques"],
            "test_accuracy": acc,
            "val_accuracy": a["accuracy"],
            "eval_batch": eval_batch(path),  # 1: the graph depends on the batch (dynamic int8)
            "latency_ms": latency.median_ms,
            "latency_p90_ms": latency.p90_ms,
            "latency_source": latency.source,
            "latency_error_pct": latency.error_pct,
            "latency_low_ms": latency.low_ms,  # a prediction's ~90% interval; empty when measured
            "latency_high_ms": latency.high_ms,
            "size_mb": a["size_mb"],
            "compressed_mb": a["compressed_mb"],
            "params": a["params"],
            "macs": a["macs"],
            "path": str(path),
        })
    pareto = pd.DataFrame(rows)
    base = pareto.iloc[0]
    pareto["accuracy_drop_pt"] = (base["test_accuracy"] - pareto["test_accuracy"]) * 100
    pareto["speedup"] = base["latency_ms"] / pareto["latency_ms"]
    pareto["compression"] = base["size_mb"] / pareto["size_mb"]
    write_with(run_dir / "pareto.csv", lambda tmp: pareto.to_csv(tmp, index=False))
    summary = _summary(cfg, tasks, plan, trials, pareto)
    write_json(run_dir / "summary.json", summary)
    report = Report(run_dir, pareto, trials, summary)
    try:
        progress.log(f"report: {report.write_report()}")
    except Exception as exc:  # the tables are written; a page that fails must not lose the search
        progress.log(f"report.html not written ({type(exc).__name__}: {exc}); retry: edgepareto report")
    return report


def side_by_side(
    target: Target, paths: list[Path], input_shape: tuple[int, ...] | Sequence[tuple[int, ...]]
) -> list[Latency]:
    """Latency of every file under the same machine conditions: interleaved passes, then medians
    (a predicting target gives the same answer every pass, so it makes one). ``input_shape``: one
    for all files, or one per file (base models of different input sizes in one study)."""
    shapes = list(input_shape) if isinstance(input_shape[0], (tuple, list)) else [input_shape] * len(paths)
    with target.exclusive():  # one hold for all passes: nothing else runs on the device meanwhile
        passes = [[target.latency(p, tuple(s)) for p, s in zip(paths, shapes)]]
        if target.measures:
            passes += [
                [target.latency(p, tuple(s)) for p, s in zip(paths, shapes)] for _ in range(PASSES - 1)
            ]
    return [
        replace(
            passes[0][i],
            median_ms=float(np.median([run[i].median_ms for run in passes])),
            p90_ms=float(np.median([run[i].p90_ms for run in passes])),
        )
        for i in range(len(paths))
    ]


def _summary(
    cfg: RunConfig, tasks: Mapping[str, Task], plan: LatencyPlan, trials: pd.DataFrame,
    pareto: pd.DataFrame,
) -> dict[str, Any]:
    task = next(iter(tasks.values()))
    counts = frame_counts(trials, cfg.trials)
    failures = trials.loc[trials["state"] == "FAIL", "fail_reason"].value_counts().head(10).to_dict()
    return {
        "run": cfg.name,
        "config": cfg.to_dict(),
        "objectives": dict(zip(cfg.objectives, cfg.directions)),
        "target": plan.final.describe(),
        "latency": plan.describe(),
        "trials": {"total": len(trials), **counts.to_dict()},
        "failure_reasons": failures,
        "pareto": json.loads(pareto.to_json(orient="records")),
        "preprocessing": {
            "input_name": INPUT_NAME,
            "input_shape": [1, 3, task.img_size, task.img_size],
            "layout": "NCHW float32 RGB scaled to [0, 1], then (x - mean) / std",
            "mean": list(task.mean), "std": list(task.std),
            "classes": list(task.data.classes),
            **_transform(task),
            "by_model": {m: _transform(t) for m, t in tasks.items()},
        },
        "split_sizes": {
            "train": len(task.data.train), "val": len(task.data.val), "test": len(task.data.test)
        },
        "machine": {
            "platform": platform.platform(), "processor": platform.processor(),
            "onnxruntime": ort.__version__, "torch": torch.__version__, "optuna": optuna.__version__,
        },
    }


def _transform(task: Task) -> dict[str, Any]:
    """The task's evaluation transform as summary.json records it (its fields and one line). Without
    one (task or data), images were squashed to S x S, bilinear."""
    prep = task.preprocess or task.data.preprocess or Preprocess(task.img_size, task.mean, task.std, **SQUASH)
    return {**prep.to_dict(), "transform": prep.describe()}
