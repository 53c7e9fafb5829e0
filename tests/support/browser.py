"""Render a local HTML file in the system's headless Chromium (Debian's ``chromium``) through Playwright.

Playwright drives the system binary (``executable_path``); no browser is downloaded. Every request the
page makes other than ``file:`` and ``data:`` is blocked and recorded, so a page that needs the network
shows up in ``Rendered.requests`` (and usually in ``errors``).
"""

from __future__ import annotations

import contextlib
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--no-proxy-server", "--disable-dev-shm-usage",
    # WebGL (plotly's parallel coordinates) on the CPU, since there is no GPU
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]


def _reason() -> str | None:
    if CHROMIUM is None:
        return "chromium not installed (apt-get install chromium; .ci/run installs it when root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install -e '.[test]')"
    return None


SKIP_REASON = _reason()
requires_chromium = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")

#: What the page shows: plotly divs, those with a rendered svg, tables' body rows and links.
PROBE = """() => {
  const plots = [...document.querySelectorAll('.plotly-graph-div')];
  return {
    plots: plots.map(d => d.id),
    rendered: plots.filter(d => d.querySelector('svg.main-svg')).map(d => d.id),
    rows: Object.fromEntries([...document.querySelectorAll('table[id]')]
      .map(t => [t.id, t.querySelectorAll('tbody tr').length])),
    links: [...document.querySelectorAll('table a[href]')].map(a => a.href),
    scripts: [...document.querySelectorAll('script[src], link[href]')].map(e => e.src || e.href),
    title: document.title,
  };
}"""
#: Plotly draws asynchronously: wait until every plot div holds its svg (or give up and report).
DRAWN = """() => [...document.querySelectorAll('.plotly-graph-div')]
  .every(d => d.querySelector('svg.main-svg'))"""


@dataclass
class Rendered:
    """What a page did while loading: uncaught exceptions and console errors, blocked requests, and
    the result of :data:`PROBE`."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)


class Chromium:
    """One headless Chromium (a fresh temporary profile) for several pages; use as a context manager."""

    def __enter__(self) -> Chromium:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        except BaseException:
            self._pw.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._browser.close()
        finally:
            self._pw.stop()

    def render(self, path: Path, screenshot: Path | None = None, width: int = 1280,
               wait_ms: int = 5000) -> Rendered:
        """Open ``path`` as a file:// URL in a new page, wait for the plots, probe the page and
        optionally save a full-page PNG screenshot."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        out = Rendered()
        page = self._browser.new_page(viewport={"width": width, "height": 900})
        try:
            page.on("pageerror", lambda e: out.errors.append(f"uncaught: {e}"))
            page.on("console", lambda m: out.errors.append(f"console.{m.type}: {m.text}")
                    if m.type in ("error", "assert") else None)

            def route(r) -> None:
                if r.request.url.startswith(("file:", "data:", "blob:")):
                    r.continue_()
                else:
                    out.requests.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.goto(Path(path).resolve().as_uri(), wait_until="load")
            with contextlib.suppress(PlaywrightTimeout):  # the probe then says which plot is missing
                page.wait_for_function(DRAWN, timeout=wait_ms)
            out.probe = page.evaluate(PROBE)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            page.close()
        return out


def render(path: Path, screenshot: Path | None = None, width: int = 1280) -> Rendered:
    """:meth:`Chromium.render` in a browser of its own."""
    with Chromium() as chromium:
        return chromium.render(path, screenshot, width)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, from its IHDR header."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])
