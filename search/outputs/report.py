"""``report.html``: a self-contained, offline HTML page of a finished run.

Built only from the run folder's result files (``pareto.csv``, ``trials.csv``, ``summary.json``), so it
also works on a copied run. plotly.js is embedded once; the page fetches nothing. The figures are built
apart, by the pure functions of ``search.outputs.figures``; :func:`build_page` assembles them with the
Pareto table and :func:`write_report` writes the page atomically.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import pandas as pd

from search.config.objectives import OBJECTIVES
from search.core import stages
from search.core.atomic import write_with
from search.core.layout import REPORT_FILE, FinishedRun
from search.core.optional import require
from search.front.counts import frame_counts
from search.outputs.figures import (
    ABSENT,
    fmt,
    hypervolume_curve,
    hypervolume_figure,
    latency_predicted,
    latency_sources,
    parallel_figure,
    pareto_figure,
    several_models,
    stage_figure,
)

pio = require("plotly.io", "report.html")

REPORT_NAME = REPORT_FILE
#: How each objective enters the normalised hypervolume, as the page explains it.
HV_BOX = {
    name: (f"{name}: 0 to {spec.hv_edge:g} points lost against the baseline" if spec.relative == "drop"
           else f"{name}: 0 to {spec.hv_edge:g}× the baseline's")
    for name, spec in OBJECTIVES.items()
}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
def model_links(pareto: pd.DataFrame, trials: pd.DataFrame, run_dir: Path) -> list[str | None]:
    """Each Pareto row's model.onnx relative to the run folder (POSIX), or None when unknown: the trial's
    ``artifact`` in trials.csv, else the part of ``path`` from its ``trials/`` folder on."""
    artifacts = {}
    if "artifact" in trials:
        for t, a in zip(trials["trial"].astype(int), trials["artifact"]):
            if isinstance(a, str) and a.strip():
                artifacts[t] = a.strip()
    out: list[str | None] = []
    for t, path in zip(pareto["trial"].astype(int), pareto.get("path", [None] * len(pareto))):
        link = artifacts.get(t)
        if link is None and isinstance(path, str) and path:
            p = Path(path)
            if p.is_absolute():
                try:
                    link = p.relative_to(run_dir.resolve()).as_posix()
                except ValueError:
                    parts = PurePosixPath(p.as_posix()).parts
                    if "trials" in parts:
                        link = PurePosixPath(*parts[len(parts) - parts[::-1].index("trials") - 1:]).as_posix()
            else:
                link = p.as_posix()
        out.append(link)
    return out


def pareto_table(pareto: pd.DataFrame, links: Sequence[str | None]) -> str:
    """The Pareto models (baseline first) as an HTML table, each linking to its model.onnx."""
    several = several_models(pareto)
    heads = ["trial", *(["model"] if several else []), "role", "techniques", "test acc %", "drop pt",
             "latency ms", "speed-up", "size MB", "compression", "model"]
    rows = []
    for (_, r), link in zip(pareto.iterrows(), links):
        source = str(r.get("latency_source", "") or "")
        err = r.get("latency_error_pct")
        if source.startswith("predicted") and err is not None and not pd.isna(err):
            source = f"{source} ±{float(err):.0f}%"
        cells = [
            str(int(r["trial"])), *([html.escape(str(r["model"]))] if several else []),
            html.escape(str(r["role"])), html.escape(str(r["techniques"])),
            fmt(r["test_accuracy"] * 100, ".2f"), fmt(r["accuracy_drop_pt"], "+.2f"),
            f"{fmt(r['latency_ms'], '.4g')} <span class=src>{html.escape(source)}</span>",
            fmt(r["speedup"], ".2f") + "x", fmt(r["size_mb"], ".3f"), fmt(r["compression"], ".1f") + "x",
            f'<a href="{html.escape(quote(link), quote=True)}">{html.escape(link)}</a>' if link else "-",
        ]
        cls = ' class="baseline"' if str(r["role"]).startswith("baseline") else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in heads)
    return (f'<table id="pareto-table" class="pareto"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _budgets(config: Mapping[str, Any]) -> str:
    parts = []
    if config.get("min_accuracy"):
        parts.append(f"accuracy ≥ {float(config['min_accuracy']) * 100:g} %")
    if config.get("max_accuracy_drop") is not None:
        parts.append(f"accuracy drop ≤ {float(config['max_accuracy_drop']):g} pt below the baseline")
    if config.get("max_latency_ms"):
        parts.append(f"latency ≤ {float(config['max_latency_ms']):g} ms")
    if config.get("max_size_mb"):
        parts.append(f"size ≤ {float(config['max_size_mb']):g} MB")
    return "; ".join(parts) + " (checked on validation)" if parts else "none"


def header(report: FinishedRun) -> str:
    """The run's facts as a definition list, with what each number means."""
    s, cfg = report.summary, report.summary.get("config", {})
    counts = frame_counts(report.trials, int(cfg.get("trials", len(report.trials))))
    failures = "; ".join(f"{n} {reason}" for reason, n in counts.failed_by_reason.items())
    counts_text = counts.describe() + (f" (failed: {failures})" if failures else "")
    arrows = {"maximize": "↑ maximise", "minimize": "↓ minimise"}
    objectives = ", ".join(f"{k} {arrows.get(v, v)}" for k, v in s.get("objectives", {}).items())
    machine = s.get("machine", {})
    if isinstance(machine, dict):
        machine = "; ".join(f"{k} {v}" for k, v in machine.items() if v)
    splits = s.get("split_sizes", {})
    shape = s.get("preprocessing", {}).get("input_shape") or ["?"]
    size = cfg.get("img_size") or shape[-1]  # null in run.yaml: the model family's size
    data = f"{cfg.get('data', '?')}, {size} px"
    if splits:
        data += ", " + ", ".join(f"{k} {v}" for k, v in splits.items())
    mode = "predicted" if latency_predicted(report.pareto) else "measured"
    models = cfg.get("model", "")
    sources = ", ".join(latency_sources(report.pareto))
    items = [
        ("models", ", ".join(models) if isinstance(models, list) else str(models)),
        ("target", str(s.get("target", "?"))),
        ("latency", f"{mode} ({sources}); {s.get('latency', '')}"),
        ("objectives", objectives),
        ("trials", counts_text),
        ("budgets", _budgets(cfg)),
        ("sampler", f"{cfg.get('sampler', '?')}, backend {cfg.get('backend', '?')}"),
        ("data", data),
        ("machine", str(machine)),
    ]
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    return f"<dl class=facts>{rows}</dl>"


def latency_phrase(report: FinishedRun) -> str:
    """``median ms, measured side by side on TARGET`` or ``ms predicted for TARGET (not measured)``."""
    target = str(report.summary.get("config", {}).get("target") or report.summary.get("target", "the target"))
    if latency_predicted(report.pareto):
        return f"ms predicted for {target} (not measured)"
    return f"median ms, measured side by side on {target}"


def stage_note() -> str:
    """What the stage names mean, as HTML: the part of ``search.core.stages``'s docstring after its
    first paragraph (the one definition)."""
    text = " ".join((stages.__doc__ or "").split("\n\n", 1)[-1].split())
    return re.sub(r"``(.+?)``", r"<code>\1</code>", html.escape(text))


def stage_section(plot: str | None) -> str:
    """The "Where the time goes" section around its plot; empty without one (no stage times)."""
    if plot is None:
        return ""
    return f"""<section id="stages">
<h2>Where the time goes</h2>
<p class="note">Seconds per stage of each trial that recorded them, stacked; hover for the seconds and
the share of the trial. The stages are those of <code>search/core/stages.py</code>: {stage_note()}</p>
{plot}
</section>
"""


# ---- the page ---------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2530;
       background: #f5f6f8; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 12px; }
h2 { font-size: 1.2rem; margin: 32px 0 6px; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 12px 18px 16px;
          margin-top: 18px; }
p.note { color: #4a5563; font-size: 0.9rem; margin: 4px 0 8px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0;
           font-size: 0.92rem; }
dl.facts dt { font-weight: 600; color: #4a5563; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table.pareto { border-collapse: collapse; width: 100%; font-size: 0.88rem; }
table.pareto th, table.pareto td { border-bottom: 1px solid #e3e6ea; padding: 5px 8px; text-align: right; }
table.pareto th { background: #f0f2f5; position: sticky; top: 0; }
table.pareto td:nth-child(-n+4), table.pareto th:nth-child(-n+4) { text-align: left; }
table.pareto tr.baseline td { background: #fbf7e6; }
span.src { color: #6b7582; font-size: 0.8rem; }
"""


def _figure_html(fig: Any, div_id: str, with_js: bool) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=with_js, div_id=div_id, config=PLOT_CONFIG)


def build_page(report: FinishedRun) -> str:
    """The whole self-contained page."""
    s, cfg = report.summary, report.summary.get("config", {})
    objectives = s.get("objectives") or {n: spec.direction for n, spec in OBJECTIVES.items()}
    phrase = latency_phrase(report)
    mode = "predicted" if latency_predicted(report.pareto) else "measured"
    test_n = s.get("split_sizes", {}).get("test")
    test = f"test split ({test_n} images)" if test_n else "test split"
    curve = hypervolume_curve(report.trials, objectives)
    figures = [
        ("pareto-plot", pareto_figure(report.pareto, report.trials, cfg, mode)),
        ("hypervolume-plot", hypervolume_figure(curve, report.trials)),
        ("parallel-plot", parallel_figure(report.trials)),
        ("stages-plot", stage_figure(report.trials)),
    ]
    plots = {name: _figure_html(fig, name, i == 0)
             for i, (name, fig) in enumerate(figures) if fig is not None}
    links = model_links(report.pareto, report.trials, report.run_dir)
    box = ", ".join(HV_BOX[k] for k in objectives if k in HV_BOX)
    title = html.escape(str(s.get("run", report.run_dir.name)))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgepareto report: {title}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>edgepareto run <code>{title}</code></h1>
<section id="facts">
{header(report)}
<p class="note">Pareto front and table: accuracy on the {html.escape(test)} of the exported ONNX model in
onnxruntime; latency: {html.escape(phrase)}. Other trials and the hypervolume use the validation split,
as the search saw them.</p>
</section>
<section id="front">
<h2>Pareto front</h2>
<p class="note">Stars: baseline; colour: model file size. Grey: the other completed trials (validation
accuracy; infeasible ones hidden, click the legend to show them). Dashed lines: budgets.</p>
{plots["pareto-plot"]}
</section>
<section id="hypervolume">
<h2>Hypervolume over trials</h2>
<p class="note">Hypervolume of the feasible completed trials so far on the run's objectives
({html.escape(", ".join(objectives))}), validation metrics, normalised to a reference box of
{html.escape(box)}; 1.0 would be a perfect, free model. Hollow markers: trials that do not count
(failed, pruned, still running or infeasible).</p>
{plots["hypervolume-plot"]}
</section>
<section id="parameters">
<h2>Technique parameters</h2>
<p class="note">Completed trials, validation metrics, coloured by accuracy. Only parameters that vary
are shown; <code>{ABSENT}</code>: the parameter did not apply (its technique was off). Drag along an axis
to filter.</p>
{plots["parallel-plot"]}
</section>
{stage_section(plots.get("stages-plot"))}<section id="models">
<h2>Pareto models</h2>
<p class="note">Test split; drop in points below the baseline; speed-up and compression against the
baseline; latency source after each latency. Links are relative to this report.</p>
{pareto_table(report.pareto, links)}
</section>
</main>
</body>
</html>
"""


def write_report(report: FinishedRun) -> Path:
    """Write ``report.html`` into the folder of the finished run ``report`` (``load_run(path)``);
    returns its path."""
    page = build_page(report)
    return write_with(Path(report.run_dir) / REPORT_NAME, lambda tmp: tmp.write_text(page, encoding="utf-8"))
