"""The figures of ``report.html``, built apart from the page: small pure functions from the result tables
(``pareto.csv``, ``trials.csv``) to plot data and plotly figures, testable without a browser."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from search.config.objectives import OBJECTIVES
from search.core.optional import require
from search.core.stages import STAGES
from search.front.pareto import hypervolume_curve as hypervolume_curve_of
from search.front.trials import stage_seconds

go = require("plotly.graph_objects", "report.html")

#: Parallel coordinates: where a conditional parameter that a trial did not use is drawn.
ABSENT = "n/a"
#: Parallel coordinates: the validation metrics after the parameters (label, column, factor, tick format).
METRIC_AXES = (("accuracy % (val)", "val_accuracy", 100.0, ".1f"), ("latency ms", "latency_ms", 1.0, ".3g"),
               ("size MB", "size_mb", 1.0, ".3g"))
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "pentagon", "hexagon", "cross")
COLORSCALE = "Viridis"
BUDGET_COLOR = "#c0392b"
#: Where the time goes: a fixed colour per stage, given in ``STAGES`` order (cycled past the eighth).
STAGE_PALETTE = ("#2a6fdb", "#8e6bd1", "#e67e22", "#16a085", "#c0392b", "#e4b429", "#34495e", "#9aa3ad")
STAGE_COLORS = {stage: STAGE_PALETTE[i % len(STAGE_PALETTE)] for i, stage in enumerate(STAGES)}


# ---- reading the tables -------------------------------------------------------------------------


def truthy(values: pd.Series) -> pd.Series:
    """A CSV column of True/False/blank as booleans (blank is False)."""
    return values.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    """The COMPLETE trials, with a boolean ``feasible`` column."""
    done = trials[trials["state"].astype(str) == "COMPLETE"].copy()
    done["feasible"] = truthy(done["feasible"]) if "feasible" in done else True
    return done


def trial_params(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Each trial's Optuna params from ``params_json`` ({} where missing or unreadable)."""
    out = []
    for raw in trials.get("params_json", pd.Series([None] * len(trials), index=trials.index)):
        try:
            value = json.loads(raw) if isinstance(raw, str) and raw else {}
        except json.JSONDecodeError:
            value = {}
        out.append(value if isinstance(value, dict) else {})
    return out


def latency_sources(pareto: pd.DataFrame) -> list[str]:
    """The distinct ``latency_source`` values of the final latencies (``measured``, ``predicted:...``)."""
    return list(dict.fromkeys(pareto.get("latency_source", pd.Series(dtype=object)).dropna().astype(str)))


def latency_predicted(pareto: pd.DataFrame) -> bool:
    """Whether the final latencies are predictions rather than measurements."""
    return any(s.startswith("predicted") for s in latency_sources(pareto))


def several_models(frame: pd.DataFrame) -> bool:
    return "model" in frame and frame["model"].dropna().nunique() > 1


def fmt(value: Any, spec: str, missing: str = "-") -> str:
    try:
        if value is None or pd.isna(value):
            return missing
        return format(float(value), spec)
    except (TypeError, ValueError):
        return missing


# ---- hypervolume ------------------------------------------------------------------------------


def baseline_values(trials: pd.DataFrame, objectives: Sequence[str]) -> dict[str, float] | None:
    """Validation values of the run's reference baseline: the first completed baseline trial (the
    first model's, whose trial comes first); None when there is none."""
    if "baseline" not in trials:
        return None
    done = completed(trials.sort_values("trial"))
    rows = done[truthy(done["baseline"])]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return {n: float(row[OBJECTIVES[n].trial_column]) for n in objectives}


def hypervolume_curve(trials: pd.DataFrame, objectives: Mapping[str, str]) -> pd.Series:
    """Normalised hypervolume of the feasible completed trials after each trial, indexed by trial number.

    Validation metrics from ``trials.csv``, relative to the baseline trial's, in the unit box of
    :func:`search.front.pareto.hypervolume_curve` (the one definition, also used by ``edgepareto bench
    search``). Failed, pruned, running or infeasible trials add no point; without a completed baseline
    the curve is all zeros.
    """
    names = list(objectives)
    cols = [OBJECTIVES[n].trial_column for n in names]
    ordered = trials.sort_values("trial")
    numbers = ordered["trial"].astype(int).tolist()
    baseline = baseline_values(ordered, names)
    done = completed(ordered).dropna(subset=cols)
    ok = done[done["feasible"]]
    values = {
        int(t): dict(zip(names, map(float, row))) for t, row in zip(ok["trial"], ok[cols].to_numpy())
    }
    curve = [0.0] * len(numbers) if baseline is None else hypervolume_curve_of(
        [values.get(n) for n in numbers], baseline, names
    )
    return pd.Series(curve, index=pd.Index(numbers, name="trial"), name="hypervolume", dtype=float)


# ---- figures ----------------------------------------------------------------------------------


def _hover(rows: pd.DataFrame, acc_col: str, split: str, several: bool) -> list[str]:
    """Hover text: trial, model, techniques, accuracy, latency, size, speed-up where known."""
    out = []
    for _, r in rows.iterrows():
        lines = [f"<b>trial {int(r['trial'])}</b>"]
        if several:
            lines.append(f"model: {html.escape(str(r.get('model', '')))}")
        lines += [
            html.escape(str(r.get("techniques", ""))),
            f"accuracy ({split}): {fmt(r[acc_col] * 100, '.2f')} %",
            f"latency: {fmt(r['latency_ms'], '.4g')} ms",
            f"size: {fmt(r['size_mb'], '.3f')} MB",
        ]
        if "speedup" in r:
            speed, comp = fmt(r["speedup"], ".2f"), fmt(r["compression"], ".1f")
            lines.append(f"speed-up: {speed}x, compression {comp}x")
        out.append("<br>".join(lines))
    return out


def pareto_figure(pareto: pd.DataFrame, trials: pd.DataFrame, config: Mapping[str, Any],
                  latency_label: str) -> go.Figure:
    """Test accuracy (%) against latency (ms) of the front and baseline(s), size as colour; the other
    completed trials faintly (validation); budgets as lines."""
    fig = go.Figure()
    several = several_models(pareto)
    on_front = set(pareto["trial"].astype(int))
    done = completed(trials)
    rest = done[~done["trial"].astype(int).isin(on_front)].dropna(subset=["val_accuracy", "latency_ms"])
    for feasible, name in ((True, "other trials (validation)"), (False, "infeasible trials (validation)")):
        part = rest[rest["feasible"] == feasible]
        if part.empty:
            continue
        fig.add_trace(go.Scatter(
            x=part["latency_ms"], y=part["val_accuracy"] * 100, mode="markers", name=name,
            marker={"color": "#9aa3ad", "size": 7, "opacity": 0.45, "symbol": "circle" if feasible else "x"},
            hovertext=_hover(part, "val_accuracy", "validation", several), hoverinfo="text",
            visible=True if feasible else "legendonly",
        ))
    sizes = pareto["size_mb"].astype(float)
    size_budget = config.get("max_size_mb")
    colorbar_title = "size MB" + (f"<br>(budget ≤ {float(size_budget):g})" if size_budget else "")
    marker_common = {"cmin": float(sizes.min()), "cmax": float(sizes.max()), "colorscale": COLORSCALE,
                     "line": {"color": "#222", "width": 1}}
    models = list(dict.fromkeys(pareto["model"].astype(str))) if "model" in pareto else [""]
    first = True
    for i, model in enumerate(models):
        rows = pareto[pareto["model"].astype(str) == model] if "model" in pareto else pareto
        suffix = f" {model}" if several else ""
        base = rows["role"].astype(str).str.startswith("baseline")
        for part, name, symbol, size, label in (
            (rows[~base], f"Pareto front (test){suffix}", SYMBOLS[i % len(SYMBOLS)], 13, None),
            (rows[base], f"baseline (test){suffix}", "star", 20, f"baseline{suffix}"),
        ):
            if part.empty:
                continue
            marker = dict(marker_common, color=part["size_mb"].astype(float).tolist(), symbol=symbol,
                          size=size, showscale=first)
            if first:
                marker["colorbar"] = {"title": {"text": colorbar_title}, "thickness": 14, "len": 0.8}
                first = False
            fig.add_trace(go.Scatter(
                x=part["latency_ms"], y=part["test_accuracy"] * 100,
                mode="markers+text" if label else "markers", name=name, legendgroup=model,
                text=[label] * len(part) if label else None, textposition="top center",
                marker=marker, hovertext=_hover(part, "test_accuracy", "test", several), hoverinfo="text",
            ))
    _budget_lines(fig, pareto, config, several)
    fig.update_layout(
        template="plotly_white", height=560, margin={"l": 70, "r": 30, "t": 40, "b": 60},
        xaxis_title=f"latency (ms, {latency_label})", yaxis_title="accuracy (%)",
        legend={"orientation": "h", "yanchor": "top", "y": -0.14, "x": 0},
        hoverlabel={"align": "left"},
    )
    return fig


def _budget_lines(fig: go.Figure, pareto: pd.DataFrame, config: Mapping[str, Any], several: bool) -> None:
    """Dashed lines at the budgets that are set (size is not an axis: it is named on the colour bar)."""
    line = {"color": BUDGET_COLOR, "dash": "dash", "width": 1.5}
    font = {"color": BUDGET_COLOR, "size": 11}
    if config.get("max_latency_ms"):
        fig.add_vline(x=float(config["max_latency_ms"]), line=line, annotation_font=font,
                      annotation_text=f"max latency {float(config['max_latency_ms']):g} ms",
                      annotation_position="top right")
    if config.get("min_accuracy"):
        fig.add_hline(y=float(config["min_accuracy"]) * 100, line=line, annotation_font=font,
                      annotation_text=f"min accuracy {float(config['min_accuracy']) * 100:g} %",
                      annotation_position="bottom left")
    drop = config.get("max_accuracy_drop")
    if drop is not None and not pd.isna(drop):
        for _, base in pareto[pareto["role"].astype(str).str.startswith("baseline")].iterrows():
            who = f" ({html.escape(str(base['model']))})" if several else ""
            fig.add_hline(y=float(base["test_accuracy"]) * 100 - float(drop), line=dict(line, dash="dot"),
                          annotation_font=font, annotation_position="bottom right",
                          annotation_text=f"max accuracy drop: {float(drop):g} pt below baseline{who}")


def hypervolume_figure(curve: pd.Series, trials: pd.DataFrame) -> go.Figure:
    """The normalised hypervolume after each trial; trials that added no point shown hollow."""
    done = completed(trials)
    counted = set(done.loc[done["feasible"], "trial"].astype(int))
    state = dict(zip(trials["trial"].astype(int), trials["state"].astype(str).str.lower()))
    status = [
        "counted" if t in counted else "infeasible" if state.get(t) == "complete" else state.get(t, "")
        for t in curve.index
    ]
    fig = go.Figure(go.Scatter(
        x=list(curve.index), y=curve.tolist(), mode="lines+markers", line={"shape": "hv", "color": "#2a6fdb"},
        marker={"size": 8, "color": ["#2a6fdb" if s == "counted" else "white" for s in status],
                "line": {"color": "#2a6fdb", "width": 1.5}},
        hovertext=[f"trial {t}: {v:.4f} ({s})" for t, v, s in zip(curve.index, curve, status)],
        hoverinfo="text", name="hypervolume",
    ))
    fig.update_layout(
        template="plotly_white", height=360, margin={"l": 70, "r": 30, "t": 20, "b": 50},
        xaxis_title="trial", yaxis_title="normalised hypervolume", yaxis={"rangemode": "tozero"},
        showlegend=False,
    )
    return fig


def param_dimensions(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Parallel-coordinates dimensions: each technique parameter whose values vary, then the validation
    metrics. Booleans and categoricals get tick labels; a trial that lacks a (conditional) parameter is
    drawn at an extra ``n/a`` tick below its values."""
    done = completed(trials).dropna(subset=["val_accuracy"])
    params = trial_params(done)
    keys = list(dict.fromkeys(k for p in params for k in p))
    groups = list(dict.fromkeys(k.split(".")[0] for k in keys))
    keys.sort(key=lambda k: groups.index(k.split(".")[0]))  # a technique's switch, then its settings
    dims = []
    for key in keys:
        raw = [p.get(key) for p in params]
        present = [v for v in raw if v is not None]
        if len({json.dumps(v, sort_keys=True, default=str) for v in present}) < 2:
            continue  # constant: says nothing
        missing = len(present) < len(raw)
        if all(isinstance(v, bool) for v in present):
            dims.append(_categorical(key, raw, ["off", "on"], lambda v: "on" if v else "off", missing))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            dims.append(_numeric(key, raw, missing))
        else:
            labels = sorted({str(v) for v in present})
            dims.append(_categorical(key, raw, labels, str, missing))
    for label, col, factor, fmt in METRIC_AXES:
        if col in done:
            values = (done[col].astype(float) * factor).fillna(0.0)
            dims.append({"label": label, "values": values.tolist(), "tickformat": fmt})
    return dims


def _categorical(key: str, raw: Sequence[Any], labels: list[str], name: Callable[[Any], str],
                 missing: bool) -> dict[str, Any]:
    ticks = ([ABSENT] if missing else []) + labels
    index = {t: i for i, t in enumerate(ticks)}
    values = [index[ABSENT] if v is None else index[name(v)] for v in raw]
    return {"label": key, "values": values, "tickvals": list(range(len(ticks))), "ticktext": ticks,
            "range": [-0.2, len(ticks) - 0.8]}


def _numeric(key: str, raw: Sequence[Any], missing: bool) -> dict[str, Any]:
    present = [float(v) for v in raw if v is not None]
    lo, hi = min(present), max(present)
    if not missing:
        return {"label": key, "values": [float(v) for v in raw], "tickformat": ".3g"}
    absent = lo - 0.2 * (hi - lo)
    distinct = sorted(set(present))
    integers = all(float(v).is_integer() for v in distinct)
    ticks = distinct if integers and len(distinct) <= 6 else list(np.linspace(lo, hi, 4))
    return {
        "label": key, "values": [absent if v is None else float(v) for v in raw],
        "tickvals": [absent, *ticks], "ticktext": [ABSENT, *(f"{t:.3g}" for t in ticks)],
    }


def parallel_figure(trials: pd.DataFrame) -> go.Figure:
    """Technique parameters against validation metrics of the completed trials, coloured by accuracy."""
    dims = param_dimensions(trials)
    acc = next((d["values"] for d in dims if d["label"].startswith("accuracy")), [])
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line={"color": acc, "colorscale": COLORSCALE, "showscale": True,
              "colorbar": {"title": {"text": "accuracy %"}, "thickness": 14}},
        labelangle=-30, labelside="top", labelfont={"size": 11}, tickfont={"size": 10},
    ))
    fig.update_layout(template="plotly_white", height=520, margin={"l": 100, "r": 60, "t": 120, "b": 30})
    return fig


def stage_figure(trials: pd.DataFrame) -> go.Figure | None:
    """Where the time goes: the seconds per stage of each trial that recorded them, stacked in ``STAGES``
    order (x: trial number); hover gives the seconds and the share of the trial (and the state of one
    that did not complete). None when no trial recorded stage times (a run from before them)."""
    seconds = stage_seconds(trials)
    if seconds.empty:
        return None
    totals = seconds.sum(axis=1)
    shares = seconds.div(totals.where(totals > 0), axis=0).fillna(0.0)
    state = dict(zip(trials["trial"].astype(int), trials["state"].astype(str))) if "state" in trials else {}
    notes = [f", {state[t].lower()}" if state.get(t, "COMPLETE") != "COMPLETE" else "" for t in seconds.index]
    fig = go.Figure()
    for stage in STAGES:
        fig.add_trace(go.Bar(
            x=seconds.index.tolist(), y=seconds[stage].tolist(), name=stage,
            marker={"color": STAGE_COLORS[stage]},
            customdata=[[share, total, note] for share, total, note in zip(shares[stage], totals, notes)],
            hovertemplate=(f"trial %{{x}}%{{customdata[2]}} (%{{customdata[1]:.3g}} s)<br>{stage}: "
                           "%{y:.3g} s, %{customdata[0]:.0%} of the trial<extra></extra>"),
        ))
    fig.update_layout(
        barmode="stack", template="plotly_white", height=420, margin={"l": 70, "r": 30, "t": 20, "b": 60},
        xaxis={"title": {"text": "trial"}, "type": "category"}, yaxis_title="seconds",
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0, "traceorder": "normal"},
        hoverlabel={"align": "left"},
    )
    return fig


# ---- tables and text ---------------------------------------------------------------------------


