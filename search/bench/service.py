"""``edgepareto bench service``: status latency of the REST service while a search runs.

Starts ``edgepareto serve`` on loopback with a private runs folder and token, measures bursts of
concurrent ``GET /v1/searches/{id}`` first with the service idle, then while a search runs in its
worker process, and reports percentiles of both side by side (the machine's noise hits both).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: A search that keeps the machine busy for the whole measurement (one worker, all cores).
BUSY_SEARCH = {"model": "resnet18", "img_size": 32, "epochs": 3, "trials": 200, "max_accuracy_drop": 50}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, token: str, method: str = "GET", body: dict | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
    })
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.load(response)


def burst(url: str, token: str, clients: int, pool: ThreadPoolExecutor) -> list[float]:
    """``clients`` requests at once; each one's latency in ms (a failure raises)."""

    def one(_: int) -> float:
        start = time.perf_counter()
        status, _body = _call(url, token)
        if status != 200:
            raise RuntimeError(f"status {status}")
        return (time.perf_counter() - start) * 1000

    return list(pool.map(one, range(clients)))


def bench_service(
    clients: int = 50, bursts: int = 20, runs_dir: str = "runs", log: Callable[[str], None] = print,
    search: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """p50/p90/p99/max of status requests in ``bursts`` bursts of ``clients``, idle vs busy (while
    ``search``, by default ``BUSY_SEARCH``, runs)."""
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    token = secrets.token_hex(16)
    (work / "token").write_text(token)
    rows: list[dict[str, Any]] = []
    search_id = None
    with ThreadPoolExecutor(max_workers=clients) as pool:
        # idle: a server that queues but runs nothing; busy: the same jobs database, one search running
        for phase, max_running in (("idle", 0), ("busy", 1)):
            server, base = _start(work, token, max_running)
            try:
                if search_id is None:
                    search_id = _call(f"{base}/v1/searches", token, "POST", search or BUSY_SEARCH)[1]["id"]
                url = f"{base}/v1/searches/{search_id}"
                if phase == "busy":
                    _wait(lambda u=url: _call(u, token)[1]["state"] == "running", 60, "the search to start")
                    time.sleep(5)  # into the baseline's training
                burst(url, token, clients, pool)  # warm-up
                log(f"{phase}: {bursts} bursts of {clients} concurrent status requests")
                for _ in range(bursts):
                    rows += [{"phase": phase, "ms": ms} for ms in burst(url, token, clients, pool)]
                    time.sleep(0.2)
                state = _call(url, token)[1]["state"]
                if state != ("queued" if phase == "idle" else "running"):
                    raise RuntimeError(f"the search was {state} during the {phase} phase")
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
    frame = pd.DataFrame(rows)
    table = frame.groupby("phase", sort=False)["ms"].agg(
        requests="count", p50=lambda s: np.percentile(s, 50), p90=lambda s: np.percentile(s, 90),
        p99=lambda s: np.percentile(s, 99), max="max",
    ).reset_index()
    out = Path(runs_dir) / "bench" / f"service-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    log(f"saved {out}")
    return table


def _start(work: Path, token: str, max_running: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "search", "serve", "--port", str(port), "--runs-dir", str(work / "runs"),
         "--token-file", str(work / "token"), "--max-running", str(max_running)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    _wait(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=2).status == 200, 60, "the server")
    return server, base


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def format_service(table: pd.DataFrame) -> str:
    view = table.copy()
    for col in ("p50", "p90", "p99", "max"):
        view[col] = view[col].map("{:.1f} ms".format)
    return view.to_string(index=False)
