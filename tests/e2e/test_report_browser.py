"""report.html of a finished run rendered in headless Chromium (skipped when Chromium is not installed):
plots drawn, no JavaScript errors, no network, working links, also after the run folder is copied; and
control pages that show the browser checks can fail."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest

from search.front.trials import stage_seconds
from tests.support.browser import Chromium, Rendered, png_size, requires_chromium

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PLOTS = ["pareto-plot", "hypervolume-plot", "parallel-plot"]


def plots_of(run: Path) -> list[str]:
    """The plots of ``run``'s report: ``PLOTS``, then where the time goes when its trials recorded it."""
    timed = not stage_seconds(pd.read_csv(run / "trials.csv")).empty
    return PLOTS + (["stages-plot"] if timed else [])


# ---- in the browser ---------------------------------------------------------------------------


def check_report_page(page: Rendered, run: Path, rows: int) -> None:
    """What a good report shows in the browser; raises AssertionError otherwise."""
    assert not page.errors, f"JavaScript errors: {page.errors}"
    assert not page.requests, f"network requests: {page.requests}"
    assert page.probe["plots"] == plots_of(run), f"plot divs: {page.probe['plots']}"
    assert page.probe["rendered"] == plots_of(run), f"plots drawn: {page.probe['rendered']}"
    assert page.probe["rows"].get("pareto-table") == rows, f"table rows: {page.probe['rows']}"
    assert len(page.probe["links"]) == rows
    for link in page.probe["links"]:
        url = urlparse(link)
        target = Path(unquote(url.path))
        assert url.scheme == "file" and target.is_file(), f"broken link {link}"
        assert target.resolve().is_relative_to(run.resolve()), f"link outside the run: {link}"


@pytest.fixture(scope="module")
def chromium():
    with Chromium() as browser:
        yield browser


@requires_chromium
def test_report_in_chromium(chromium, report_run, tmp_path):
    shot = tmp_path / "report.png"
    page = chromium.render(report_run / "report.html", screenshot=shot)
    check_report_page(page, report_run, rows=len(pd.read_csv(report_run / "pareto.csv")))
    assert page.probe["title"].endswith(report_run.name)
    width, height = png_size(shot)
    assert width == 1280 and height > 1500 and shot.stat().st_size > 50_000
    shutil.copy(shot, report_run / "report.png")  # beside the report, to look at


@requires_chromium
def test_report_in_chromium_after_copying_the_run(chromium, report_run, tmp_path):
    """The page and its links work from wherever the folder is copied (paths in pareto.csv are stale)."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(report_run, moved)
    page = chromium.render(moved / "report.html")
    check_report_page(page, moved, rows=len(pd.read_csv(moved / "pareto.csv")))


@requires_chromium
def test_report_in_chromium_with_stage_times(chromium, report_run, tmp_path):
    """Where the time goes, drawn as the fifth plot when the trials recorded their stage times."""
    from search import load_run
    from search.core.stages import STAGE_KEYS

    run = tmp_path / "timed"
    shutil.copytree(report_run, run)
    trials = pd.read_csv(run / "trials.csv")
    trials[list(STAGE_KEYS)] = [[0.5 * (i + 1) for i in range(len(STAGE_KEYS))]] * len(trials)
    trials.to_csv(run / "trials.csv", index=False)
    load_run(run).write_report()
    page = chromium.render(run / "report.html")
    assert plots_of(run)[-1] == "stages-plot"
    check_report_page(page, run, rows=len(pd.read_csv(run / "pareto.csv")))


@requires_chromium
def test_harness_catches_a_javascript_error(chromium, report_run, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        (report_run / "report.html").read_text(encoding="utf-8")
        .replace("</body>", '<script>throw new Error("boom")</script></body>'), encoding="utf-8")
    page = chromium.render(bad)
    assert any("boom" in e for e in page.errors)
    with pytest.raises(AssertionError, match="JavaScript errors"):
        check_report_page(page, report_run, rows=len(pd.read_csv(report_run / "pareto.csv")))
    tiny = tmp_path / "tiny.html"
    tiny.write_text('<p>x</p><script>console.error("logged")</script>')
    assert chromium.render(tiny).errors == ["console.error: logged"]


@requires_chromium
def test_harness_catches_a_missing_or_undrawn_plot(chromium, report_run, tmp_path):
    rows = len(pd.read_csv(report_run / "pareto.csv"))
    page = (report_run / "report.html").read_text(encoding="utf-8")
    table = page[page.index('<table id="pareto-table"'):page.index("</table>") + len("</table>")]
    missing = tmp_path / "no-plots.html"
    missing.write_text(f"<html><body>{table}</body></html>", encoding="utf-8")
    got = chromium.render(missing)
    assert not got.errors and got.probe["rows"]["pareto-table"] == rows
    with pytest.raises(AssertionError, match="plot divs"):
        check_report_page(got, report_run, rows)
    undrawn = tmp_path / "undrawn.html"  # the divs are there, nothing draws into them
    divs = "".join(f'<div id="{p}" class="plotly-graph-div"></div>' for p in plots_of(report_run))
    undrawn.write_text(f"<html><body>{divs}{table}</body></html>", encoding="utf-8")
    got = chromium.render(undrawn, wait_ms=1000)
    with pytest.raises(AssertionError, match="plots drawn"):
        check_report_page(got, report_run, rows)


@requires_chromium
def test_harness_catches_network_requests(chromium, tmp_path):
    page = tmp_path / "online.html"
    page.write_text('<script src="https://cdn.plot.ly/plotly-3.0.0.min.js"></script><p>x</p>')
    got = chromium.render(page)
    assert got.requests == ["https://cdn.plot.ly/plotly-3.0.0.min.js"]
    with pytest.raises(AssertionError, match="network requests"):
        check_report_page(Rendered(requests=got.requests), tmp_path, 0)
