"""The trials of a study as a table (``trials.csv``): Optuna and pandas only, no torch, so the service
shows a running search's trials without loading any model code. Also where their time went: each
trial's seconds per stage (``search.core.stages``) read back from the table, and the stages' shares."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import optuna
import pandas as pd
from optuna.trial import TrialState

from search.core.stages import STAGE_KEYS, STAGES
from search.study.cluster import BASELINE_ATTR
from search.study.constraints import DUPLICATE_ATTR, MODEL_ATTR, PRUNED_ATTR, is_feasible
from search.study.halving import RUNG_STOP_ATTR


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, techniques, validation metrics, failure reason, seconds per stage."""
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
            "latency_low_ms": a.get("latency_low_ms"),  # a prediction's ~90% interval (None: measured)
            "latency_high_ms": a.get("latency_high_ms"),
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
            "pruned_reason": a.get(PRUNED_ATTR, ""),  # why it stopped before a result (--fidelity)
            "recovery_epochs": a.get("recovery_epochs"),  # --fidelity halving: the epochs it fine-tuned
            "rung_stop": a.get(RUNG_STOP_ATTR, ""),  # --fidelity halving: why it went no further
            "duration_s": t.duration.total_seconds() if t.duration else None,
            **{key: a.get(key) for key in STAGE_KEYS},  # None: a duplicate, or a run from before stages
            "artifact": a.get("artifact", ""),
            "params_json": json.dumps(t.params, default=str),
        })
    return pd.DataFrame(rows)



def stage_seconds(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials of a ``trials.csv`` table that recorded stage times: one row per trial (indexed by trial
    number), one column of seconds per stage in ``STAGES`` order (0 for a stage it did not record)."""
    values = trials.reindex(columns=list(STAGE_KEYS)).apply(pd.to_numeric, errors="coerce")
    timed = values.notna().any(axis=1)
    numbers = trials["trial"][timed].astype(int) if "trial" in trials else pd.Series(dtype=int)
    seconds = values[timed].fillna(0.0).astype(float)
    seconds.columns = pd.Index(STAGES)
    seconds.index = pd.Index(numbers, name="trial")
    return seconds


def stage_shares(seconds: Mapping[str, float]) -> dict[str, float]:
    """Each stage's fraction of the total of ``seconds`` (stage -> seconds, a missing stage counts 0), in
    ``STAGES`` order; {} when the total is 0. Raises ValueError on an unknown stage or a negative or
    non-finite time."""
    unknown = sorted(set(seconds) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    values = {s: float(seconds.get(s, 0.0)) for s in STAGES}
    bad = [s for s, v in values.items() if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"stage times must be finite and >= 0: {', '.join(f'{s}={values[s]}' for s in bad)}")
    total = sum(values.values())
    return {s: v / total for s, v in values.items()} if total > 0 else {}
