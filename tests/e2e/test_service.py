"""The REST service over real HTTP: ``edgepareto serve`` in a subprocess on loopback (see
tests/support/service.py).

A full search through the API (progress, Pareto front, trials, select agreeing with the CLI, the model
downloaded and run), cancelling queued and running jobs, a crash and restart with nothing lost, auth on
every endpoint, path traversal, body size limits and validation errors.
"""

from __future__ import annotations

import csv
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.support.cli import ROOT
from tests.support.runs import wait_until
from tests.support.service import (
    STATES,
    TERMINAL,
    Server,
    free_port,
    get,
    job,
    processes_mentioning,
    serve_command,
    server_env,
    strict_json,
    submit,
    wait_gone,
    wait_state,
)

TINY = {"model": "test_resnet", "img_size": 16, "epochs": 2, "trials": 4, "max_accuracy_drop": 50}
#: quantization only after a 1-epoch baseline: about a second a trial
QUICK = {
    "model": "test_resnet", "img_size": 16, "epochs": 1, "space": "quant-only", "max_accuracy_drop": 50,
}
#: a search that runs for minutes unless cancelled
LONG = {"model": "test_resnet", "img_size": 16, "epochs": 3, "trials": 40, "max_accuracy_drop": 50}
pytestmark = pytest.mark.slow

ID_RE = re.compile(r"^[0-9a-f]{4,32}$")
FAKE_ID = "0123abcd"
SECRET = "s3cret-from-the-environment"


def seeded_root(tmp_path: Path, baselines) -> Path:
    """A server root whose runs dir already holds the baselines of TINY and QUICK searches (trained
    once per session), as after earlier searches on this server."""
    runs = tmp_path / "runs"
    for epochs in (TINY["epochs"], QUICK["epochs"]):
        baselines.seed(runs, epochs=epochs)
    return tmp_path


@pytest.fixture(scope="module")
def server(tmp_path_factory, baselines):
    """A server that runs one search at a time (the full flow, then the cancel test)."""
    with Server(seeded_root(tmp_path_factory.mktemp("service"), baselines), max_running=1) as s:
        yield s


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """A server that queues searches but runs none (--max-running 0): requests only, no training."""
    with Server(tmp_path_factory.mktemp("service-idle"), max_running=0) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def idle_client(idle):
    with idle.client() as c:
        yield c


@pytest.fixture(scope="module")
def done_job(server, client) -> dict[str, Any]:
    """The tiny search, submitted through the API and finished (its final GET)."""
    job_id = submit(client, TINY)
    assert ID_RE.match(job_id), job_id
    return wait_state(client, job_id, ("done",), timeout=240, server=server)


def raw(server: Server, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, token: bool = True) -> tuple[int, bytes]:
    """A request with ``path`` sent as is (httpx would normalise '..' and percent escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        hdrs = {**(server.auth if token else {}), **(headers or {})}
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def detail_text(response) -> str:
    """The 422 body's detail as one string (locations and messages), for 'names the field' checks."""
    return json.dumps(strict_json(response)["detail"])


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- 1. the full flow


@pytest.mark.timeout(300)
def test_full_flow_search_select_download(server, client, done_job):
    job_id = done_job["id"]
    run = server.runs_dir / job_id
    for name in ("pareto.csv", "trials.csv", "summary.json", "report.html"):
        assert (run / name).is_file(), name

    assert done_job["error"] is None
    assert done_job["created_at"] and done_job["started_at"] and done_job["finished_at"]
    assert {k: done_job["config"][k] for k in TINY} == TINY
    progress = done_job["progress"]
    assert progress["trials_total"] == 4
    assert progress["trials_finished"] == 4
    assert progress["complete"] >= 1 and progress["complete"] + progress["failed"] == 4

    listed = strict_json(client.get("/v1/searches"))["searches"]
    mine = [s for s in listed if s["id"] == job_id]
    assert len(mine) == 1 and mine[0]["state"] == "done" and mine[0]["created_at"]

    # the Pareto front: the rows of pareto.csv
    pareto = done_job["pareto"]
    assert isinstance(pareto, list) and pareto
    for row in pareto:
        for key in ("trial", "role", "techniques", "test_accuracy", "latency_ms", "size_mb"):
            assert key in row, (key, row)
    assert [int(r["trial"]) for r in csv_rows(run / "pareto.csv")] == [r["trial"] for r in pareto]
    assert any("baseline" in r["role"] for r in pareto)  # "baseline" or "baseline+pareto"

    # the trials
    trials = strict_json(client.get(f"/v1/searches/{job_id}/trials"))["trials"]
    finished = sorted(t["trial"] for t in trials if t["state"] in ("COMPLETE", "FAIL", "PRUNED"))
    assert finished == [0, 1, 2, 3], trials
    assert all(t["state"] == "WAITING" for t in trials if t["trial"] not in finished), trials  # as trials.csv
    assert len(trials) == len(csv_rows(run / "trials.csv"))
    for t in trials:
        for key in ("trial", "state", "techniques", "val_accuracy", "latency_ms", "size_mb", "fail_reason"):
            assert key in t, (key, t)
    complete = {t["trial"] for t in trials if t["state"] == "COMPLETE"}
    assert {r["trial"] for r in pareto} <= complete

    # select with a budget: the same answer as `edgepareto select --json`
    sizes = sorted(r["size_mb"] for r in pareto)
    budget = {"max_size_mb": sizes[len(sizes) // 2] * 1.001, "prefer": "accuracy"}
    r = client.post(f"/v1/searches/{job_id}/select", json=budget)
    assert r.status_code == 200, r.text
    answer = strict_json(r)
    assert answer["fits"] is True and answer["prefer"] == "accuracy"
    assert answer["model"]["size_mb"] <= budget["max_size_mb"]
    cli = subprocess.run(
        [sys.executable, "-m", "search", "select", job_id, "--runs-dir", str(server.runs_dir), "--json",
         "--max-size-mb", repr(budget["max_size_mb"]), "--prefer", "accuracy"],
        capture_output=True, text=True, timeout=120, env=server_env(), cwd=server.root,
    )
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    assert expected.pop("copied_to") is None
    # the API leaves out the server's file path and gives the model's download URL instead
    chosen = expected["model"]["trial"]
    assert expected["model"].pop("path").endswith(f"{job_id}/trials/{chosen:04d}/model.onnx")
    assert answer["model"].pop("model_url") == f"/v1/searches/{job_id}/models/{chosen}"
    assert answer == expected

    # nothing fits: 200 with fits false and the closest model (the CLI exits 3)
    r = client.post(f"/v1/searches/{job_id}/select", json={"max_size_mb": 1e-6, "min_accuracy": 1.0})
    assert r.status_code == 200, r.text
    miss = strict_json(r)
    assert miss["fits"] is False and miss["shortfalls"] and miss["candidates"] == 0

    # download the chosen model, run it, compare with the run's file
    trial = answer["model"]["trial"]
    r = client.get(f"/v1/searches/{job_id}/models/{trial}")
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("application/octet-stream")
    assert r.content == (run / "trials" / f"{trial:04d}" / "model.onnx").read_bytes()
    sess = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    # the file declares its own input size: a candidate with `resolution` runs smaller than the data
    _, channels, *hw = sess.get_inputs()[0].shape
    assert channels == 3 and all(isinstance(d, int) and 0 < d <= 16 for d in hw), hw
    x = np.random.default_rng(0).standard_normal((1, 3, *hw)).astype(np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert out.shape == (1, 10) and np.isfinite(out).all()

    # a trial that does not exist
    assert client.get(f"/v1/searches/{job_id}/models/99").status_code == 404

    assert strict_json(client.get("/healthz"))["status"] == "ok"


def test_select_rejects_bad_budgets_and_a_search_not_done(client, done_job, idle_client):
    job_id = done_job["id"]
    for body, field in (
        ({"prefer": "speed"}, "prefer"), ({"min_accuracy": 1.5}, "min_accuracy"),
        ({"max_latency_ms": 0}, "max_latency_ms"), ({"max_size_mb": -1}, "max_size_mb"),
        ({"max_size_mb": "small"}, "max_size_mb"), ({"budget": 1}, "budget"),
    ):
        r = client.post(f"/v1/searches/{job_id}/select", json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert field in detail_text(r), (body, r.text)
    queued = submit(idle_client, QUICK | {"trials": 2})
    r = idle_client.post(f"/v1/searches/{queued}/select", json={})
    assert r.status_code == 409, r.text
    assert idle_client.post(f"/v1/searches/{FAKE_ID}/select", json={}).status_code == 404


def test_targets(idle_client):
    r = idle_client.get("/v1/targets")
    assert r.status_code == 200, r.text
    names = [t["name"] for t in strict_json(r)["targets"]]
    assert "host" in names and "rpi4" in names


# ---------------------------------------------------------------- 2. cancelling


def test_cancel_a_queued_search(idle, idle_client):
    job_id = submit(idle_client, QUICK | {"trials": 3})
    assert job(idle_client, job_id)["state"] == "queued"  # --max-running 0: nothing starts
    assert strict_json(idle_client.get("/healthz"))["running"] == 0
    r = idle_client.delete(f"/v1/searches/{job_id}")
    assert r.status_code == 202, r.text
    assert {k: strict_json(r)[k] for k in ("id", "state")} == {"id": job_id, "state": "cancelled"}
    after = job(idle_client, job_id)
    assert after["state"] == "cancelled" and after["finished_at"]
    assert idle_client.delete(f"/v1/searches/{job_id}").status_code == 409
    assert idle_client.delete(f"/v1/searches/{FAKE_ID}").status_code == 404
    assert not (idle.runs_dir / job_id / "trials").exists()


def test_cancel_a_running_search_stops_its_worker(server, client, done_job):
    before = server.children()
    long_id = submit(client, LONG)
    queued_id = submit(client, QUICK | {"trials": 2})  # behind it (--max-running 1)
    assert job(client, queued_id)["state"] == "queued"
    r = client.delete(f"/v1/searches/{queued_id}")
    assert r.status_code == 202 and strict_json(r)["state"] == "cancelled", r.text
    assert job(client, queued_id)["state"] == "cancelled"

    wait_state(client, long_id, ("running",), timeout=60, server=server)
    # let the worker get going (its baseline trained, its study made) before interrupting it
    wait_until(lambda: (server.runs_dir / long_id / "trials").exists(), 120, "the search's trials", poll=0.2)
    workers = server.children() - before
    assert workers, "no worker process below the server while a search runs"
    health = strict_json(client.get("/healthz"))
    assert health["running"] == 1, health
    assert client.post(f"/v1/searches/{long_id}/select", json={}).status_code == 409

    t0 = time.monotonic()
    r = client.delete(f"/v1/searches/{long_id}")
    assert r.status_code == 202, r.text
    body = strict_json(r)
    assert body == {"id": long_id, "state": "running", "cancel": True}  # its scheduler stops it
    final = wait_state(client, long_id, ("cancelled",), timeout=60, server=server, poll=0.2)
    assert final["finished_at"], final
    left = wait_gone(workers, timeout=10)
    assert not left, f"worker processes alive {time.monotonic() - t0:.1f} s after the cancel: {left}"
    assert not processes_mentioning(long_id, exclude=[server.proc.pid]), "a process still runs the job"
    assert client.delete(f"/v1/searches/{long_id}").status_code == 409
    assert client.delete(f"/v1/searches/{done_job['id']}").status_code == 409
    assert client.get(f"/v1/searches/{long_id}/trials").status_code == 200
    assert strict_json(client.get("/healthz"))["running"] == 0
    assert job(client, done_job["id"])["state"] == "done"  # untouched


def test_a_failing_search_ends_failed_with_a_one_line_error(server, client):
    job_id = submit(client, QUICK | {"model": "no_such_timm_model", "trials": 2})
    body = wait_state(client, job_id, ("failed",), timeout=120, server=server)
    assert isinstance(body["error"], str) and body["error"].strip(), body
    assert "\n" not in body["error"] and len(body["error"]) <= 500, body["error"]
    assert "no_such_timm_model" in body["error"], body["error"]  # the CLI's own message
    assert body["pareto"] is None and body["finished_at"]
    assert client.post(f"/v1/searches/{job_id}/select", json={}).status_code == 409
    assert client.delete(f"/v1/searches/{job_id}").status_code == 409


def test_a_teacher_name_is_never_loaded_from_the_workers_folder(server, client, idle, idle_client):
    """Regression: ``"teacher": "service.db"`` passed the data-root check as a model name, and the worker
    (whose folder holds the jobs database) loaded that file as a checkpoint. One rule now decides file
    or name on both sides: no suffix of a checkpoint, no separator, so a timm name, never a file."""
    assert (server.runs_dir / "service.db").is_file()  # the file the worker would have found
    job_id = submit(client, QUICK | {"teacher": "service.db", "trials": 2})
    body = wait_state(client, job_id, ("failed",), timeout=120, server=server)
    assert "unknown timm model 'service.db'" in body["error"], body["error"]
    # a checkpoint suffix makes it a file: confined to the data root and made absolute there
    job_id = submit(idle_client, QUICK | {"teacher": "w.safetensors", "trials": 2})
    assert job(idle_client, job_id)["config"]["teacher"] == str((idle.root / "w.safetensors").resolve())
    r = idle_client.post("/v1/searches", json=QUICK | {"teacher": "../w.safetensors", "trials": 2})
    assert r.status_code == 422 and "teacher" in detail_text(r)


def test_polling_starting_searches_is_safe(server, client):
    """Clients polling a search's status and trials while its worker creates the study: no 5xx or
    dropped connection, and the searches are not disturbed (all end done)."""
    ids = [submit(client, QUICK | {"epochs": 0, "trials": 1}) for _ in range(3)]
    errors: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        with server.client() as c:
            while not stop.is_set():
                for job_id in ids:
                    for path in (f"/v1/searches/{job_id}/trials", f"/v1/searches/{job_id}"):
                        try:
                            status = c.get(path).status_code
                        except httpx.HTTPError as exc:
                            errors.append(f"GET {path}: {type(exc).__name__}: {exc}")
                            continue
                        if status != 200:
                            errors.append(f"GET {path}: {status}")

    threads = [threading.Thread(target=poll, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        ends = {}
        for job_id in ids:
            body = wait_state(client, job_id, TERMINAL, timeout=120, server=server)
            ends[job_id] = (body["state"], body["error"])
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, f"{len(errors)} failed polls, e.g. {errors[:5]}"
    assert all(state == "done" for state, _ in ends.values()), ends


# ---------------------------------------------------------------- 3. crash and restart


def trials_by_number(c: httpx.Client, job_id: str) -> dict[int, dict]:
    return {t["trial"]: t for t in strict_json(c.get(f"/v1/searches/{job_id}/trials"))["trials"]}


def complete_trials(c: httpx.Client, server: Server, job_id: str, at_least: int) -> dict[int, dict]:
    """Wait until the running search has ``at_least`` complete trials; returns them by number. (Polls
    the job's progress; its trials only once the study exists, see test_polling_starting_searches.)"""
    deadline = time.monotonic() + 120
    while True:
        body = job(c, job_id)
        if body["progress"]["complete"] >= at_least:
            done = {n: t for n, t in trials_by_number(c, job_id).items() if t["state"] == "COMPLETE"}
            if len(done) >= at_least:
                return done
        assert body["state"] == "running", f"{job_id} is {body['state']!r} before the interruption: {body}"
        assert time.monotonic() < deadline, f"{job_id}: {body['progress']} after 120 s"
        server.children()
        time.sleep(0.2)


def assert_kept(before: dict[int, dict], after: dict[int, dict]) -> None:
    """The trials finished before an interruption are still there, unchanged (not re-run: a re-run
    would re-measure the latency), and the search went on past them."""
    for number, row in before.items():
        assert after[number]["state"] == "COMPLETE", after[number]
        for key in ("techniques", "val_accuracy", "latency_ms", "size_mb"):
            assert after[number][key] == row[key], (number, key, row, after[number])
    assert max(after) > max(before)


@pytest.mark.timeout(900)
def test_restart_after_a_crash_or_a_stop_loses_nothing(tmp_path, baselines):
    db = tmp_path / "jobs.db"
    s = Server(seeded_root(tmp_path / "svc", baselines), max_running=1, extra=["--db", f"sqlite:///{db}"])
    try:
        s.start()
        assert db.is_file() and not (s.runs_dir / "service.db").exists()
        with s.client() as c:
            a = submit(c, QUICK | {"trials": 24})
            b = submit(c, QUICK | {"trials": 12})
            wait_state(c, a, ("running",), timeout=60, server=s)
            before = complete_trials(c, s, a, 3)
            health = strict_json(c.get("/healthz"))
            assert (health["running"], health["queued"]) == (1, 1), health
            assert job(c, b)["state"] == "queued"
        workers = s.children()
        s.kill()
        assert not wait_gone(workers, 10)
        assert not processes_mentioning(a), "a process of job A survived the crash"

        s.start()  # the crashed A resumes, then B runs
        with s.client() as c:
            done_a = wait_state(c, a, ("done",), timeout=180, server=s)
            assert done_a["error"] is None and done_a["pareto"]
            assert done_a["progress"]["trials_total"] == 24
            after = trials_by_number(c, a)
            assert_kept(before, after)
            wait_state(c, b, ("running",), timeout=60, server=s)
            before_b = complete_trials(c, s, b, 3)
        workers = s.children()
        # a clean stop (SIGTERM; uvicorn re-raises it after its shutdown) interrupts B and queues it
        assert s.stop() == -signal.SIGTERM, s.tail()
        assert not wait_gone(workers, 10)
        assert not processes_mentioning(b), "a process of job B survived the stop"

        s.start()
        with s.client() as c:
            done_b = wait_state(c, b, ("done",), timeout=120, server=s)
            assert done_b["error"] is None and done_b["pareto"]
            assert_kept(before_b, trials_by_number(c, b))
            ids = {x["id"] for x in strict_json(c.get("/v1/searches"))["searches"]}
            assert {a, b} <= ids
        # and a clean restart keeps finished searches as they were
        s.stop()
        s.start()
        with s.client() as c:
            assert trials_by_number(c, a) == after
            for job_id, finished in ((a, done_a), (b, done_b)):
                again = job(c, job_id)
                assert again["pareto"] == finished["pareto"] and again["state"] == "done"
                assert again == finished, (again, finished)
    finally:
        s.stop()


# ---------------------------------------------------------------- 4. auth


def _endpoints(server: Server, job_id: str) -> list[tuple[str, str, dict | None]]:
    """Every /v1 operation of the served OpenAPI spec, with its parameters filled in."""
    spec = strict_json(get(f"{server.url}/openapi.json"))
    out = []
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1"):
            continue
        url = path.replace("{id}", job_id).replace("{search_id}", job_id)
        url = re.sub(r"\{trial[^}]*\}", "0", url)
        assert "{" not in url, f"unexpected path parameter in {path}"
        for method in ops:
            if method in ("get", "post", "put", "patch", "delete"):
                body = {} if method in ("post", "put", "patch") else None
                out.append((method.upper(), url, body))
    return out


def test_auth_on_every_endpoint(idle, idle_client):
    job_id = submit(idle_client, QUICK | {"trials": 2})
    endpoints = _endpoints(idle, job_id)
    expected = {
        ("GET", "/v1/searches"), ("POST", "/v1/searches"), ("GET", f"/v1/searches/{job_id}"),
        ("GET", f"/v1/searches/{job_id}/trials"), ("GET", f"/v1/searches/{job_id}/models/0"),
        ("POST", f"/v1/searches/{job_id}/select"), ("DELETE", f"/v1/searches/{job_id}"),
        ("GET", "/v1/targets"),
    }
    assert expected <= {(m, u) for m, u, _ in endpoints}, endpoints
    wrong = ["Bearer wrong", f"Bearer {idle.token}x", f"Bearer {idle.token[:-1]}", f"Bearer  {idle.token}x"]
    for method, url, body in endpoints + [("GET", f"/v1/searches/{FAKE_ID}", None)]:
        content = json.dumps(body).encode() if body is not None else None
        status, _ = raw(idle, method, url, content, token=False)
        assert status == 401, (method, url, status)
        for header in wrong:
            status, _ = raw(idle, method, url, content, headers={"Authorization": header}, token=False)
            assert status == 403, (method, url, header, status)
    for method, url, body in endpoints:  # a well-formed body that fails validation
        if body is not None:
            status, _ = raw(idle, method, url, b'{"trials": "x", "prefer": 1}', token=False)
            assert status == 401, (method, url, "invalid body, no token", status)
    r = idle_client.get("/v1/searches", headers={"Authorization": ""})
    assert r.status_code == 401
    with idle.client(token="nope") as bad:
        r = bad.get("/v1/searches")
        assert r.status_code == 403
    r = get(f"{idle.url}/v1/searches")
    assert r.status_code == 401 and "bearer" in r.headers.get("www-authenticate", "").lower(), r.headers
    for open_path in ("/healthz", "/openapi.json", "/docs"):
        assert get(f"{idle.url}{open_path}").status_code == 200, open_path
    assert job(idle_client, job_id)["state"] == "queued"  # the refused DELETEs did nothing


def test_auth_comes_before_parsing_the_body(idle, idle_client):
    """An unauthenticated request learns nothing from its body: a malformed one is 401 too."""
    job_id = submit(idle_client, QUICK | {"trials": 2})
    failures = []
    for method, url, body in _endpoints(idle, job_id):
        if body is not None:
            for content in (b"not json", b"{"):
                status, _ = raw(idle, method, url, content, token=False)
                if status != 401:
                    failures.append((method, url, content, status))
    assert not failures, failures


def test_server_refuses_to_start_without_a_token(tmp_path):
    empty = tmp_path / "empty-token"
    empty.write_text("\n  \n")
    cases = {
        "no token": [],
        "empty token file": ["--token-file", str(empty)],
        "missing token file": ["--token-file", str(tmp_path / "absent")],
    }
    for what, extra in cases.items():
        port = free_port()
        proc = subprocess.Popen(
            serve_command("--port", str(port), "--runs-dir", str(tmp_path / "runs"), *extra),
            cwd=tmp_path, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"{what}: the server started (it must refuse)")
        assert proc.returncode == 2, (what, proc.returncode, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "token" in lines[0].lower(), (what, err)


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_token_from_the_environment_and_loopback_by_default(tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            serve_command("--port", str(port), "--runs-dir", str(tmp_path / "runs"), "--max-running", "0"),
            cwd=tmp_path, env=server_env(SECRET), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "no /healthz"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1/searches"
        assert get(url, headers={"Authorization": f"Bearer {SECRET}"}).status_code == 200
        assert get(url, headers={"Authorization": "Bearer other"}).status_code == 403
        assert (tmp_path / "runs" / "service.db").is_file()  # the default --db
        outward = _outward_address()
        if outward is not None:  # not reachable from other machines
            with pytest.raises(OSError):
                socket.create_connection((outward, port), timeout=5).close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# ---------------------------------------------------------------- 5. path traversal

BAD_IDS = [
    "..%2f..%2fetc", "..%2F..%2Fetc%2Fpasswd", "../../etc/passwd", "%2e%2e", "%2e%2e%2f%2e%2e", "..",
    "%2fetc%2fpasswd", "a.b", "..%5c..%5cetc", "%00", "abc%00def", "service.db", "deadbeef", "DEADBEEF",
    "0123ABCD", "%252e%252e%252f", "....//....//etc",
]
BAD_TRIALS = ["-1", "99999", "1;rm", "1%3Brm%20-rf", "..%2f", "..%2f..%2fservice.db", "%2e%2e", "0x1", "1e3",
              "9" * 40, "../0", "..", "nan", "1%2f..%2f..%2f..", "%2e%2e%2f%2e%2e%2fservice.db"]
#: other spellings of trial 1: its model, or 404/422
TRIAL_1_ALIASES = ["1.0", "%201", "0" * 30 + "1", "+1"]


def _plant_decoy(server: Server) -> None:
    """A run folder that is not a job: the service must not serve it."""
    decoy = server.runs_dir / "deadbeef" / "trials" / "0000"
    decoy.mkdir(parents=True, exist_ok=True)
    (decoy / "model.onnx").write_bytes(b"not a job")
    (decoy.parent.parent / "pareto.csv").write_text("trial,role\n0,baseline\n")


def test_ids_and_trials_cannot_reach_outside_the_runs_root(server, done_job):
    _plant_decoy(server)
    job_id = done_job["id"]
    paths = []
    for bad in BAD_IDS:
        paths += [
            ("GET", f"/v1/searches/{bad}"), ("GET", f"/v1/searches/{bad}/trials"),
            ("GET", f"/v1/searches/{bad}/models/0"), ("POST", f"/v1/searches/{bad}/select"),
            ("DELETE", f"/v1/searches/{bad}"),
        ]
    for bad in BAD_TRIALS:
        paths += [("GET", f"/v1/searches/{job_id}/models/{bad}")]
    failures = []
    for method, path in paths:
        status, content = raw(server, method, path, b"{}" if method == "POST" else None)
        if status not in (404, 422) and not (status == 405 and path.count("/") != 3):
            failures.append((method, path, status, content[:200]))
    trial_1 = (server.runs_dir / job_id / "trials" / "0001" / "model.onnx").read_bytes()
    for alias in TRIAL_1_ALIASES:
        path = f"/v1/searches/{job_id}/models/{alias}"
        status, content = raw(server, "GET", path)
        if status not in (404, 422) and not (status == 200 and content == trial_1):
            failures.append(("GET", path, status, content[:200]))
    assert not failures, "\n".join(map(str, failures))
    with server.client() as c:
        assert job(c, job_id)["state"] == "done"


def test_paths_in_a_request_must_lie_under_the_data_root(idle, idle_client, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (idle.root / "escape").unlink(missing_ok=True)
    (idle.root / "escape").symlink_to(outside)
    cases = [
        ("data", "/etc"), ("data", "../outside"), ("data", str(outside)), ("data", "escape"),
        ("data", "sub/../../outside"), ("checkpoint", "/etc/passwd"),
        ("checkpoint", "../../etc/passwd"), ("checkpoint", "escape/model.pt"), ("teacher", "/etc/passwd"),
        ("teacher", "../model.pt"), ("space", "/etc/passwd"), ("space", "../space.yaml"),
    ]
    for key, value in cases:
        r = idle_client.post("/v1/searches", json=QUICK | {"trials": 2, key: value})
        assert r.status_code == 422, (key, value, r.status_code, r.text)
        assert key in detail_text(r), (key, value, r.text)
    # names that are not paths still work
    for extra in ({"data": "digits"}, {"teacher": "base"}, {"teacher": "test_resnet"}, {"space": "cnn"}):
        r = idle_client.post("/v1/searches", json=QUICK | {"trials": 2, **extra})
        assert r.status_code == 202, (extra, r.text)
    # a path under the data root is accepted
    preset = ROOT / "spaces" / "presets" / "quant-only.yaml"
    (idle.root / "space.yaml").write_text(preset.read_text())
    r = idle_client.post("/v1/searches", json=QUICK | {"trials": 2, "space": "space.yaml"})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("key", ["data", "checkpoint", "teacher", "space"])
def test_a_nul_byte_in_a_path_is_422_not_500(idle, key):
    value = "x/a\u0000b.pt" if key == "teacher" else "a\u0000b"
    status, content = raw(idle, "POST", "/v1/searches", json.dumps(QUICK | {key: value}).encode())
    assert status == 422, (key, status, content[:300])
    assert key in json.dumps(json.loads(content)["detail"]), content[:300]


# ---------------------------------------------------------------- 6. body size


def _padded(config: dict[str, Any], size: int) -> bytes:
    """``config`` as JSON padded with trailing whitespace to exactly ``size`` bytes."""
    body = json.dumps(config).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def test_oversize_bodies_are_refused(idle):
    limit = 65536
    status, _ = raw(idle, "POST", "/v1/searches", json.dumps({"model": "x" * 200_000}).encode())
    assert status == 413
    status, _ = raw(idle, "POST", "/v1/searches", _padded(QUICK, limit + 1))
    assert status == 413
    status, content = raw(idle, "POST", "/v1/searches", _padded(QUICK | {"trials": 2}, limit))
    assert status == 202, content[:300]
    status, content = raw(idle, "POST", "/v1/searches", _padded({**QUICK, "padding": "p"}, limit))
    assert status == 422, content[:300]
    status, _ = raw(idle, "POST", f"/v1/searches/{FAKE_ID}/select", _padded({}, limit + 1))
    assert status == 413
    # a body without Content-Length (chunked) is held to the same limit
    conn = http.client.HTTPConnection("127.0.0.1", idle.port, timeout=30)
    try:
        chunks = (b"x" * 8192 for _ in range(25))
        conn.request("POST", "/v1/searches", body=chunks, encode_chunked=True,
                     headers={**idle.auth, "Content-Type": "application/json"})
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    assert strict_json(get(f"{idle.url}/healthz"))["status"] == "ok"


# ---------------------------------------------------------------- 7. validation


@pytest.mark.parametrize(("body", "field"), [
    (QUICK | {"bogus_key": 1}, "bogus_key"),
    (QUICK | {"trials": "three"}, "trials"),
    (QUICK | {"trials": 0}, "trials"),
    (QUICK | {"trials": -5}, "trials"),
    (QUICK | {"img_size": 4}, "img_size"),
    (QUICK | {"objectives": ["speed"]}, "objectives"),
    (QUICK | {"sampler": "grid"}, "sampler"),
    (QUICK | {"runs_dir": "/tmp/elsewhere"}, "runs_dir"),
    (QUICK | {"storage": "sqlite:////tmp/x.db"}, "storage"),
    (QUICK | {"name": "mine"}, "name"),
    (QUICK | {"warm_start": "maybe"}, "warm_start"),
])
def test_bad_configs_are_422_naming_the_field(idle_client, body, field):
    r = idle_client.post("/v1/searches", json=body)
    assert r.status_code == 422, r.text
    detail = strict_json(r)["detail"]
    assert isinstance(detail, list) and detail and {"loc", "msg", "type"} <= set(detail[0]), detail
    assert any(field in d["loc"] for d in detail), f"no 'loc' names {field!r}: {detail}"


@pytest.mark.parametrize(("path", "content"), [
    ("/v1/searches", b'{"trials": NaN}'),
    ("/v1/searches", b'{"img_size": 1e400}'),
    ("/v1/searches", b'{"timeout": NaN}'),
    ("/v1/searches", b'{"max_accuracy_drop": NaN}'),
    ("/v1/searches", b'{"max_size_mb": Infinity}'),
    (f"/v1/searches/{FAKE_ID}/select", b'{"max_latency_ms": NaN}'),
    (f"/v1/searches/{FAKE_ID}/select", b'{"min_accuracy": NaN}'),
])
def test_non_finite_numbers_are_refused(idle, path, content):
    """NaN and Infinity are not JSON (Python's parser takes them): refused like any bad value, never a
    5xx (a 422 that echoes the value cannot be written as JSON) and never stored as a setting."""
    status, body = raw(idle, "POST", path, content)
    assert status == 422, (path, content, status, body[:300])


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b"null", b'"x"', b'{"trials": 2'])
def test_malformed_bodies_are_422(idle, content):
    status, body = raw(idle, "POST", "/v1/searches", content)
    assert status == 422, (content, status, body[:300])


def test_queue_counts_and_listing(idle, idle_client):
    before = strict_json(idle_client.get("/healthz"))
    job_id = submit(idle_client, QUICK | {"trials": 2})
    after = strict_json(idle_client.get("/healthz"))
    assert after["queued"] == before["queued"] + 1 and after["running"] == 0
    body = job(idle_client, job_id)
    assert body["state"] == "queued" and body["pareto"] is None and body["started_at"] is None
    assert body["config"] == QUICK | {"trials": 2}
    assert strict_json(idle_client.get(f"/v1/searches/{job_id}/trials")) == {"trials": []}
    assert idle_client.get(f"/v1/searches/{job_id}/models/0").status_code == 404
    states = {s["id"]: s["state"] for s in strict_json(idle_client.get("/v1/searches"))["searches"]}
    assert states[job_id] == "queued" and set(states.values()) <= set(STATES)
    assert not (idle.runs_dir / job_id / "trials").exists()
    assert body["progress"]["trials_finished"] == 0
    assert body["progress"]["trials_total"] == 2, body["progress"]
