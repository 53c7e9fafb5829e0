"""The trials of a study as a table (``trials.csv``): Optuna and pandas only, no torch, so the service
shows a running search's trials without loading any model code."""

from __future__ import annotations

import json

import optuna
import pandas as pd
from optuna.trial import TrialState

from search.study.cluster import BASELINE_ATTR
from search.study.constraints import DUPLICATE_ATTR, MODEL_ATTR, is_feasible


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, techniques, validation metrics, failure reason."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            "model": a.get(MODEL_ATTR, ""),
            "baseline": bool(a.get(BASELINE_ATTR)),
            "techniques": a.get("techniques", ""),
            "val_accuracy": a.get("accuracy"),
            "latency_ms": a.get("latency_ms"),
            "latency_p90_ms": a.get("latency_p90_ms"),
            "latency_source": a.get("latency_source"),
            "latency_error_pct": a.get("latency_error_pct"),
            "latency_predicted_ms": a.get("latency_predicted_ms"),
            "infeasible_reason": a.get("infeasible_reason", ""),
            "size_mb": a.get("size_mb"),
            "compressed_mb": a.get("compressed_mb"),
            "params": a.get("params"),
            "macs": a.get("macs"),
            "sparsity": a.get("sparsity"),
            "feasible": is_feasible(t) if t.state == TrialState.COMPLETE else None,
            "constraints": json.dumps(t.constraints) if t.constraints else "",
            "fail_reason": a.get("fail_reason", ""),
            "interrupted": bool(a.get("interrupted")),  # cut short and run again: not counted
            "duplicate_of": a.get(DUPLICATE_ATTR),  # the trial whose result this repeated candidate reused
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "artifact": a.get("artifact", ""),
            "params_json": json.dumps(t.params, default=str),
        })
    return pd.DataFrame(rows)

