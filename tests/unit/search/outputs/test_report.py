"""report.html: the pure figure and table builders on hand-made tables, then the page of a finished run
(self-contained, escaped). tests/e2e/test_report_browser.py renders it in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search import load_run
from search.core.errors import UserError
from search.core.stages import STAGE_KEYS, STAGES
from search.front.trials import trials_frame
from search.outputs.figures import (
    ABSENT,
    STAGE_COLORS,
    hypervolume_curve,
    param_dimensions,
    pareto_figure,
    stage_figure,
)
from search.outputs.report import model_links, pareto_table, write_report
from tests.support.studies import timed_study

PLOTS = ["pareto-plot", "hypervolume-plot", "parallel-plot"]
ACC_LAT = {"accuracy": "maximize", "latency": "minimize"}


def trials_table(rows: list[tuple], csv_roundtrip: Path | None = None) -> pd.DataFrame:
    """trials.csv-like rows of (trial, state, feasible, val_accuracy, latency_ms, size_mb, params);
    trial 0 is the baseline."""
    frame = pd.DataFrame([
        {"trial": t, "state": s, "feasible": f, "val_accuracy": a, "latency_ms": lat, "size_mb": size,
         "baseline": t == 0, "techniques": "x", "artifact": f"trials/{t:04d}/model.onnx",
         "params_json": json.dumps(p or {})}
        for t, s, f, a, lat, size, p in rows
    ])
    if csv_roundtrip is not None:  # as the report reads it: feasible becomes True/False/NaN
        frame.to_csv(csv_roundtrip, index=False)
        frame = pd.read_csv(csv_roundtrip)
    return frame


# ---- hypervolume ------------------------------------------------------------------------------


def test_hypervolume_curve_by_hand(tmp_path):
    """Relative to the baseline (trial 0: accuracy 0.90, latency 2 ms): accuracy drop over a 5-point
    edge, latency as a fraction of the baseline's; only feasible completed trials add points."""
    trials = trials_table([
        (0, "COMPLETE", True, 0.90, 2.0, 1.0, None),  # the baseline dominates nothing in the box
        (1, "COMPLETE", True, 0.80, 3.0, 1.0, None),  # worse than the baseline on both: flat
        (2, "FAIL", None, None, None, None, None),  # failed: flat
        (3, "COMPLETE", False, 0.99, 0.5, 1.0, None),  # infeasible, and better: flat
        (4, "COMPLETE", True, 0.88, 1.0, 1.0, None),  # 2 points lost, half the latency: (0.4, 0.5)
        (5, "RUNNING", None, None, None, None, None),
        (6, "COMPLETE", True, 0.86, 0.5, 1.0, None),  # a new trade-off: (0.8, 0.25)
        (7, "COMPLETE", False, 0.10, 4.0, 1.0, None),  # infeasible: flat
    ], csv_roundtrip=tmp_path / "trials.csv")
    curve = hypervolume_curve(trials, ACC_LAT)
    assert list(curve.index) == [0, 1, 2, 3, 4, 5, 6, 7]
    first = (1 - 0.4) * (1 - 0.5)
    last = first + (1 - 0.8) * (1 - 0.25) - (1 - 0.8) * (1 - 0.5)  # the boxes overlap
    assert curve.tolist() == pytest.approx([0, 0, 0, 0, first, first, last, last])


def test_hypervolume_curve_never_decreases_and_stays_in_unit_box():
    rng = np.random.default_rng(0)
    rows = [(0, "COMPLETE", True, 0.5, 2.5, 1.5, None)] + [
        (i, "COMPLETE" if rng.random() > 0.2 else "FAIL", bool(rng.random() > 0.3),
         float(rng.random()), float(rng.random() * 5), float(rng.random() * 3), None)
        for i in range(1, 40)
    ]
    curve = hypervolume_curve(trials_table(rows), {"accuracy": "maximize", "latency": "minimize",
                                                   "size": "minimize"})
    assert (np.diff(curve.to_numpy()) >= -1e-12).all()
    assert 0 < curve.iloc[-1] <= 1 and curve.iloc[0] == 0  # the baseline dominates nothing


def test_hypervolume_curve_single_objective_and_nothing_feasible():
    rows = [(0, "COMPLETE", False, 0.90, 1, 1, None),  # an infeasible baseline sets the box, adds nothing
            (1, "COMPLETE", True, 0.86, 1, 1, None), (2, "COMPLETE", True, 0.88, 1, 1, None),
            (3, "COMPLETE", True, 0.87, 1, 1, None)]
    assert hypervolume_curve(trials_table(rows), {"accuracy": "maximize"}).tolist() == pytest.approx(
        [0.0, 1 - 0.8, 1 - 0.4, 1 - 0.4])
    none = [(0, "FAIL", None, None, None, None, None), (1, "COMPLETE", False, 0.9, 1, 1, None)]
    assert hypervolume_curve(trials_table(none), ACC_LAT).tolist() == [0.0, 0.0]


# ---- figures and table ------------------------------------------------------------------------


def test_param_dimensions_conditional_constant_and_categorical():
    trials = trials_table([
        (0, "COMPLETE", True, 0.9, 1.0, 1.0, {"prune": False, "quantize": False}),
        (1, "COMPLETE", True, 0.8, 1.0, 1.0,
         {"prune": True, "prune.ratio": 0.5, "quantize": True, "quantize.mode": "fp16", "q.ops": "all"}),
        (2, "COMPLETE", True, 0.7, 1.0, 1.0,
         {"prune": True, "prune.ratio": 0.3, "quantize": True, "quantize.mode": "static", "q.ops": "all"}),
        (3, "FAIL", None, None, None, None, {"prune": True, "prune.ratio": 0.9}),  # not completed: left out
    ])
    dims = {d["label"]: d for d in param_dimensions(trials)}
    # q.ops is constant where present: dropped; a technique's settings follow its switch
    assert list(dims) == ["prune", "prune.ratio", "quantize", "quantize.mode", "accuracy % (val)",
                          "latency ms", "size MB"]
    assert dims["prune"]["ticktext"] == ["off", "on"] and dims["prune"]["values"] == [0, 1, 1]
    ratio = dims["prune.ratio"]
    assert ratio["ticktext"][0] == ABSENT and ratio["values"][0] == ratio["tickvals"][0] < 0.3
    assert ratio["values"][1:] == [0.5, 0.3]
    assert dims["quantize.mode"]["ticktext"] == [ABSENT, "fp16", "static"]
    assert dims["quantize.mode"]["values"] == [0, 1, 2]
    assert dims["accuracy % (val)"]["values"] == pytest.approx([90, 80, 70])


def pareto_rows(models=("m1",)) -> pd.DataFrame:
    rows = []
    for i, m in enumerate(models):
        rows.append({"trial": 10 * i, "model": m, "role": "baseline", "techniques": "baseline",
                     "test_accuracy": 0.9, "latency_ms": 2.0, "latency_source": "measured", "size_mb": 4.0,
                     "accuracy_drop_pt": 0.0, "speedup": 1.0, "compression": 1.0,
                     "path": f"/elsewhere/run/trials/{10 * i:04d}/model.onnx"})
        rows.append({"trial": 10 * i + 1, "model": m, "role": "pareto", "techniques": "q <int8> & co",
                     "test_accuracy": 0.88, "latency_ms": 1.0, "latency_source": "predicted:analytic",
                     "latency_error_pct": 12.0, "size_mb": 1.0, "accuracy_drop_pt": 2.0, "speedup": 2.0,
                     "compression": 4.0, "path": f"/elsewhere/run/trials/{10 * i + 1:04d}/model.onnx"})
    return pd.DataFrame(rows)


def test_pareto_figure_models_baselines_and_budgets():
    pareto = pareto_rows(("m1", "m2"))
    trials = trials_table([(t, "COMPLETE", True, 0.8, 1.5, 2.0, None) for t in (0, 1, 5, 10, 11)]
                          + [(6, "COMPLETE", False, 0.3, 0.5, 0.2, None)])
    config = {"max_latency_ms": 1.8, "min_accuracy": 0.85, "max_accuracy_drop": 5.0, "max_size_mb": 3.0}
    fig = pareto_figure(pareto, trials, config, "measured")
    names = [t.name for t in fig.data]
    assert names == ["other trials (validation)", "infeasible trials (validation)", "Pareto front (test) m1",
                     "baseline (test) m1", "Pareto front (test) m2", "baseline (test) m2"]
    assert fig.data[0].x == (1.5,) and fig.data[1].visible == "legendonly"  # trial 5; trial 6 hidden
    assert fig.data[3].marker.symbol == "star" and fig.data[2].marker.symbol != fig.data[4].marker.symbol
    assert sum(bool(t.marker.showscale) for t in fig.data) == 1  # one colour bar for size
    assert "budget ≤ 3" in fig.data[2].marker.colorbar.title.text
    lines = sorted((s.type, s.x0 if s.x0 == s.x1 else s.y0) for s in fig.layout.shapes)
    # latency budget, min accuracy, and one max-drop line per base model (baseline 90 % - 5 pt)
    assert [(t, round(v, 6)) for t, v in lines] == [("line", 1.8), ("line", 85.0), ("line", 85.0),
                                                    ("line", 85.0)]
    assert len(pareto_figure(pareto, trials, {"max_accuracy_drop": None}, "measured").layout.shapes) == 0


def test_model_links_and_table_escape_text(tmp_path):
    pareto = pareto_rows()
    trials = trials_table([(0, "COMPLETE", True, 0.9, 2, 4, None)])  # trial 1 has no trials.csv artifact
    links = model_links(pareto, trials, tmp_path)
    assert links == ["trials/0000/model.onnx", "trials/0001/model.onnx"]  # the second from its path
    table = pareto_table(pareto, links)
    assert "q &lt;int8&gt; &amp; co" in table and "<int8>" not in table
    assert table.count("<tr") == 3 and 'href="trials/0001/model.onnx"' in table
    assert "predicted:analytic ±12%" in table


def test_stage_figure_stacks_each_trials_stages(tmp_path):
    """One bar per trial that recorded stage times (the failed trial 2 too; not the duplicate 3 nor the
    older 4), one segment per stage in order and colour; each stack is the trial's total."""
    frame = trials_frame(timed_study())
    frame.to_csv(tmp_path / "trials.csv", index=False)
    trials = pd.read_csv(tmp_path / "trials.csv")
    fig = stage_figure(trials)
    assert fig is not None and fig.layout.barmode == "stack"
    assert [t.name for t in fig.data] == list(STAGES)
    assert [t.marker.color for t in fig.data] == [STAGE_COLORS[s] for s in STAGES]
    assert len(set(STAGE_COLORS.values())) == len(STAGES)  # a colour of its own per stage
    assert all(list(t.x) == [0, 1, 2, 5] for t in fig.data)
    totals = trials.set_index("trial").loc[[0, 1, 2, 5], list(STAGE_KEYS)].sum(axis=1)
    assert np.sum([t.y for t in fig.data], axis=0) == pytest.approx(totals.to_numpy())
    train = fig.data[STAGES.index("train")]
    assert [share for share, _, _ in train.customdata] == pytest.approx([0, 12 / 16.1, 1, 6 / 8])
    assert [total for _, total, _ in train.customdata] == pytest.approx([4, 16.1, 30, 8])
    assert [note for _, _, note in train.customdata] == ["", "", ", fail", ""]
    assert "%{y:.3g} s" in train.hovertemplate and "%{customdata[0]:.0%} of the trial" in train.hovertemplate


def test_no_stage_figure_without_stage_times():
    assert stage_figure(trials_table([(0, "COMPLETE", True, 0.9, 2, 4, None)])) is None  # an older run
    frame = trials_frame(timed_study())
    assert stage_figure(frame[frame["trial"].isin([3, 4])]) is None


# ---- the page ---------------------------------------------------------------------------------


class Refs(HTMLParser):
    """Every src/href attribute of a page's tags (script bodies are not parsed as tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, v or "") for k, v in attrs if k in ("src", "href")]


def test_write_report_without_results_raises(tmp_path):
    (tmp_path / "started").mkdir()
    with pytest.raises(UserError, match="no results yet"):
        write_report(load_run(tmp_path / "started"))
    with pytest.raises(UserError, match="no run"):
        write_report(load_run(tmp_path / "missing"))


def test_report_is_self_contained(report_run):
    page = (report_run / "report.html").read_text(encoding="utf-8")
    refs = Refs()
    refs.feed(page)
    external = [r for r in refs.refs if r[1].startswith(("http:", "https:", "//"))]
    assert not external, external
    assert not [r for r in refs.refs if r[0] in ("script", "link")]  # all scripts and styles inline
    assert page.count("plotly.js v") == 1  # the library embedded once
    assert all(f'id="{p}"' in page for p in PLOTS)
    assert not list(report_run.glob(".report.html.*"))  # no temporary file left


def test_report_escapes_run_text(report_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    pareto = pd.read_csv(run / "pareto.csv")
    pareto.loc[len(pareto) - 1, "techniques"] = "<script>alert(1)</script>"
    pareto.to_csv(run / "pareto.csv", index=False)
    page = write_report(load_run(run)).read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page


REPORT_SCRIPT = """
import sys
from search import load_run
run = load_run(sys.argv[1])
run.write_report()
print(run.time_per_stage())
print([m for m in sys.argv[2:] if m in sys.modules])
"""


def test_report_shows_where_the_time_goes_without_model_code(report_run, tmp_path):
    """With stage times in trials.csv: the stacked bars after the other figures, written in a fresh
    interpreter that imports no model code; without them (an older run): no section, no error."""
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    trials = pd.read_csv(run / "trials.csv")
    for i, key in enumerate(STAGE_KEYS):
        trials[key] = 0.5 * (i + 1)
    trials.to_csv(run / "trials.csv", index=False)
    done = subprocess.run([sys.executable, "-c", REPORT_SCRIPT, str(run), "torch", "timm", "onnxruntime"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    line, heavy = done.stdout.strip().splitlines()[-2:]
    assert line.startswith("time per stage: other 22%, latency 19%,") and heavy == "[]"
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.index('id="parallel-plot"') < page.index('id="stages-plot"') < page.index('id="pareto-table"')
    assert "Where the time goes" in page and "<code>compress</code>" in page  # the stages' meaning

    trials.drop(columns=list(STAGE_KEYS)).to_csv(run / "trials.csv", index=False)
    page = write_report(load_run(run)).read_text(encoding="utf-8")
    assert 'id="stages-plot"' not in page and "Where the time goes" not in page
    assert all(f'id="{p}"' in page for p in PLOTS)
