"""The device measurement agent over real HTTP on 127.0.0.1, and the ``remote:URL`` target."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import timm
import torch

from search.candidate.build import export_onnx
from search.core.errors import CandidateError, UserError
from targets import create_target
from targets.agent import HttpError, Slot
from targets.remote import RemoteTarget
from tests.support.agent import LIMIT, TOKEN, Agent, heavy_model, raw, start_agent, stop_agent
from tests.support.cli import ROOT
from tests.support.runs import wait_until


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[Agent]:
    running = start_agent(tmp_path_factory.mktemp("agent"), "--max-model-mb", str(LIMIT / 1e6))
    yield running
    stop_agent(running)


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    """The tiny timm model as ONNX (input 1x3x16x16), under the agent's limit."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    path = export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    data = path.read_bytes()
    assert len(data) < LIMIT
    return data


# -- the agent over HTTP ---------------------------------------------------------------------
def test_healthz_needs_no_token(agent):
    assert agent.request("/healthz", token=None)[:2] == (200, {"ok": True})


def test_info(agent):
    status, info, _ = agent.request("/v1/info")
    assert status == 200
    import onnxruntime as ort

    assert info["onnxruntime"] == ort.__version__ and info["numpy"] == np.__version__
    assert info["max_model_bytes"] == LIMIT and info["max_queue"] == 8
    assert info["cpu_count"] == os.cpu_count() and info["machine"] and info["python"]
    assert info["agent"].startswith("edgepareto-agent/")


def test_measure(agent, model_bytes):
    status, body, _ = agent.measure(model_bytes, "input_shape=1,3,16,16&warmup=3&repeats=25&threads=1")
    assert status == 200, body
    assert 0 < body["min_ms"] <= body["median_ms"] <= body["p90_ms"]
    assert body["mean_ms"] > 0 and body["repeats"] == 25 and body["warmup"] == 3 and body["threads"] == 1
    assert body["truncated"] is False and isinstance(body["queued_s"], float) and body["measure_s"] > 0
    assert body["started_at"] <= body["finished_at"] and body["onnxruntime"] and body["machine"]


def test_remote_target_times_each_kernel_like_the_host(agent, model_bytes, tmp_path, monkeypatch):
    """``profile=1``: the agent answers every executed node with its op and mean microseconds, the
    same nodes (by name) as the host's profiler and the executed graph here, so one calibration code
    path serves host and device."""
    from targets.host import HostTarget
    from targets.kernels import model_kernels, named_bytes

    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN", TOKEN)
    raw_path = tmp_path / "raw.onnx"
    raw_path.write_bytes(model_bytes)
    path = tmp_path / "named.onnx"
    path.write_bytes(named_bytes(raw_path))
    remote = create_target(f"remote:{agent.url}", threads=1, repeats=5)
    nodes = remote.node_times(path, (1, 3, 16, 16))
    here = HostTarget(repeats=5).node_times(path, (1, 3, 16, 16))
    executed = model_kernels(path, disabled_optimizers=remote.disabled_optimizers())
    assert set(nodes) == set(here) == set(executed.names)
    assert all(op and us > 0 for op, us in nodes.values())
    assert remote.disabled_optimizers() == ()  # an x86 agent applies the same layout transforms
    status, body, _ = agent.measure(model_bytes, "input_shape=1,3,16,16&repeats=3")
    assert status == 200 and "nodes" not in body  # only when asked


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_token_required(agent, model_bytes, token):
    for status, body, headers in (agent.request("/v1/info", token=token),
                                  agent.measure(model_bytes, token=token)):
        assert status == 401 and "token" in body["error"]
        assert headers["WWW-Authenticate"] == "Bearer"


def test_oversize_body_is_413(agent):
    status, body, _ = agent.measure(bytes(LIMIT + 1))
    assert status == 413 and "limit" in body["error"]


def test_oversize_is_refused_before_the_body_is_read(agent):
    """Headers announcing 50 MB, no body sent: the answer comes without the body, and the connection
    closes (an agent waiting for the body would leave ``raw`` to its 10 s socket timeout)."""
    answer = raw(agent, (
        f"POST /v1/measure?input_shape=1,3,16,16 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 50000000\r\n\r\n").encode()).decode()
    assert answer.startswith("HTTP/1.0 413") and "over the agent's limit" in answer


def test_missing_content_length_is_411(agent):
    request = f"POST /v1/measure?input_shape=1,3 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    answer = raw(agent, request.encode())
    assert answer.startswith(b"HTTP/1.0 411") and b'{"error": "Content-Length is required' in answer


def test_garbage_body_is_400(agent):
    status, body, _ = agent.measure(b"this is not an onnx model" * 10)
    assert status == 400 and body["error"].startswith("cannot load model:")
    assert "\n" not in body["error"] and len(body["error"]) <= 300


def test_wrong_input_shape_is_400(agent, model_bytes):
    status, body, _ = agent.measure(model_bytes, "input_shape=1,3,5")
    assert status == 400 and body["error"].startswith("cannot run model on float32 input 1,3,5:")
    assert "\n" not in body["error"] and len(body["error"]) <= 300


@pytest.mark.parametrize("query", [
    "warmup=1", "input_shape=1,3,0,16", "input_shape=1,a", "input_shape=", "input_shape=100000,100000,100",
    *(f"input_shape=1,3,16,16&{q}" for q in (
        "repeats=0", "repeats=10001", "warmup=-1", "warmup=1001", "threads=0", "repeats=x", "bogus=1",
        "repeats=2&repeats=3", f"threads={(os.cpu_count() or 1) + 1}", "profile=2", "profile=yes",
    )),
])
def test_bad_query_is_400(agent, model_bytes, query):
    status, body, _ = agent.measure(model_bytes, query)
    assert status == 400 and body["error"], query


def test_unknown_path_and_wrong_method(agent):
    assert agent.request("/v2/nothing")[0] == 404
    status, body, headers = agent.request("/v1/measure")
    assert status == 405 and headers["Allow"] == "POST" and "POST" in body["error"]
    assert agent.request("/healthz", data=b"x")[0] == 405
    assert agent.request("/v1/info", method="DELETE")[0] == 405


def test_agent_survives_errors(agent, model_bytes):
    """After every kind of bad request (and a client that hangs up), it still measures."""
    agent.measure(b"garbage")
    agent.measure(model_bytes, "input_shape=1,3,5")
    agent.measure(bytes(2 * LIMIT))
    raw(agent, (f"POST /v1/measure?input_shape=1,3,16,16 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Length: 1000\r\n\r\nabc").encode(), hang_up=True)  # body promised, never sent
    assert b'{"error": "Bad request syntax' in raw(agent, b"\x00\x01garbage\r\n\r\n")  # not HTTP at all
    assert agent.proc.poll() is None
    status, body, _ = agent.measure(model_bytes)
    assert status == 200 and body["repeats"] == 20


def test_measurements_never_overlap(agent, model_bytes):
    results: list[tuple[int, dict[str, Any]]] = []

    def one() -> None:  # long enough (300 runs) that the four requests meet at the agent
        status, body, _ = agent.measure(model_bytes, "input_shape=1,3,16,16&warmup=5&repeats=300")
        results.append((status, body))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [s for s, _ in results] == [200] * 4, results
    windows = sorted((b["started_at"], b["finished_at"]) for _, b in results)
    for (_, end), (start, _) in zip(windows, windows[1:]):
        assert end <= start, windows
    assert max(b["queued_s"] for _, b in results) > 0  # some of them did wait for the slot


def test_queue_limit_and_truncated_measurement(tmp_path):
    """--max-queue 0: while one measures, the others are refused (503) without waiting for it; --timeout-s
    cuts a long loop short."""
    busy = start_agent(tmp_path, "--max-queue", "0", "--timeout-s", "1")
    try:
        model = heavy_model()
        results: list[tuple[int, dict[str, Any], float]] = []

        def one() -> None:
            status, body, _ = busy.measure(model, "input_shape=1,16,128,128&warmup=0&repeats=10000")
            results.append((status, body, time.monotonic()))

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        statuses = sorted(s for s, _, _ in results)
        assert statuses == [200, 503, 503], results
        ok, ok_answered = next((b, at) for s, b, at in results if s == 200)
        assert ok["truncated"] is True and 1 <= ok["repeats"] < 10000
        for status, body, answered in results:
            if status == 503:  # answered while the one admitted request was still measuring
                assert body["error"].startswith("busy") and answered < ok_answered, (body, answered)
        # the slot was released: the next one measures
        status, body, _ = busy.measure(model, "input_shape=1,16,8,8&warmup=0&repeats=3")
        assert status == 200 and body["repeats"] == 3 and body["truncated"] is False
    finally:
        stop_agent(busy)


def test_runs_as_a_single_copied_file(tmp_path):
    """The agent file alone, with the project's packages and yaml/onnx/torch unimportable."""
    copy = tmp_path / "agent.py"
    copy.write_text((ROOT / "targets" / "agent.py").read_text())
    blocked = ["search", "targets", "spaces", "yaml", "onnx", "torch", "optuna", "timm", "pandas"]
    code = (
        f"import sys, runpy; sys.modules.update(dict.fromkeys({blocked!r})); sys.argv[0] = 'agent.py'; "
        "runpy.run_path('agent.py', run_name='__main__')"
    )
    single = start_agent(tmp_path, command=[sys.executable, "-I", "-c", code], cwd=tmp_path)
    try:
        assert single.request("/healthz")[0] == 200
        status, body, _ = single.measure(heavy_model(), "input_shape=1,16,8,8&warmup=1&repeats=3")
        assert status == 200 and body["repeats"] == 3
    finally:
        stop_agent(single)


def test_usage_errors_exit_2(tmp_path):
    empty, good = tmp_path / "empty", tmp_path / "good"
    empty.write_text("\n")
    good.write_text(TOKEN)
    from targets.agent import main

    for argv in ([], ["--token-file", str(tmp_path / "missing")], ["--token-file", str(empty)],
                 ["--token-file", str(good), "--port", "x"], ["--token-file", str(good), "--max-queue", "-1"],
                 ["--token-file", str(good), "--port", "70000"]):
        assert main(argv) == 2, argv


def test_unexpected_errors_and_silent_clients_do_not_stop_it(tmp_path, model_bytes, monkeypatch):
    """In-process: a bug in a handler is a one-line 500, a client that stops sending is cut off
    after the socket timeout (and gives back its queue place); the server keeps serving."""
    from targets import agent as agent_module

    token = tmp_path / "token"
    token.write_text(TOKEN)
    argv = ["--port", "0", "--token-file", str(token), "--max-queue", "0"]
    args = agent_module.build_parser().parse_args(argv)
    server = agent_module.serve(args, TOKEN)
    server.RequestHandlerClass.timeout = 0.5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    local = Agent(None, server.server_address[1])
    try:
        monkeypatch.setattr(agent_module.Agent, "info", lambda self: 1 / 0)
        status, body, _ = local.request("/v1/info")
        assert status == 500 and body["error"] == "internal error: ZeroDivisionError: division by zero"
        assert local.request("/healthz")[0] == 200

        with socket.create_connection(("127.0.0.1", local.port), timeout=10) as s:
            s.sendall((f"POST /v1/measure?input_shape=1,3,16,16 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                       "Content-Length: 1000\r\n\r\nabc").encode())  # then nothing more
            answer = s.recv(4096)  # the agent's 0.5 s socket timeout, not ours (10 s), ends the wait
            assert answer.startswith(b"HTTP/1.0 408")
        status, body, _ = local.measure(model_bytes)  # --max-queue 0: only free if the place was given back
        assert status == 200, body
    finally:
        server.shutdown()
        server.server_close()


# -- the slot ----------------------------------------------------------------------------------
def test_slot_is_fifo_bounded_and_times_out():
    slot = Slot(max_queue=2)
    slot.admit()
    slot.acquire(1)
    order: list[int] = []

    def wait(i: int) -> None:
        slot.admit()
        slot.acquire(5)
        order.append(i)
        slot.release()
        slot.leave()

    waiters = []
    for i in range(2):  # waiter 0 queues before waiter 1 starts
        waiters.append(threading.Thread(target=wait, args=(i,)))
        waiters[-1].start()
        wait_until(lambda i=i: len(slot._queue) == i + 1, 10, f"waiter {i} in the queue", poll=0.001)
    with pytest.raises(HttpError) as busy:  # one measuring, two waiting: full
        slot.admit()
    assert busy.value.status == 503 and "busy" in busy.value.message
    slot.release()
    slot.leave()
    for t in waiters:
        t.join(5)
    assert order == [0, 1]

    slot.admit()
    slot.acquire(1)
    slot.admit()
    t0 = time.monotonic()
    with pytest.raises(HttpError) as timed_out:
        slot.acquire(0.2)
    assert timed_out.value.status == 503 and time.monotonic() - t0 >= 0.2  # it waited its timeout out
    slot.leave()
    slot.release()
    slot.leave()
    slot.admit()  # nothing is left held
    slot.acquire(0.1)


# -- the remote target ---------------------------------------------------------------------------
def test_remote_target_measures(agent, model_bytes, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN", TOKEN)
    path = tmp_path / "m.onnx"
    path.write_bytes(model_bytes)
    target = create_target(f"remote:{agent.url}", threads=1, repeats=7)
    assert isinstance(target, RemoteTarget) and target.name == f"remote:{agent.url}"
    lat = target.latency(path, (1, 3, 16, 16))
    assert lat.source == "measured:remote" and lat.target == target.name and lat.repeats == 7
    assert 0 < lat.median_ms <= lat.p90_ms
    assert agent.url in target.describe() and "onnxruntime" in target.describe()
    with pytest.raises(CandidateError, match=r"agent http://127\.0\.0\.1:\d+: 400 cannot run model"):
        target.latency(path, (1, 3, 5))
    path.write_bytes(b"not onnx")
    with pytest.raises(CandidateError, match="400 cannot load model"):
        target.latency(path, (1, 3, 16, 16))
    path.write_bytes(bytes(LIMIT + 1))
    with pytest.raises(CandidateError, match="over the agent's limit"):
        target.latency(path, (1, 3, 16, 16))


def test_remote_target_token_from_file(agent, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEPARETO_AGENT_TOKEN", raising=False)
    token_file = tmp_path / "tok"
    token_file.write_text(f"  {TOKEN}\n")
    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN_FILE", str(token_file))
    assert RemoteTarget(agent.url).check()["max_model_bytes"] == LIMIT


def test_remote_target_user_errors(agent, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEPARETO_AGENT_TOKEN", raising=False)
    monkeypatch.delenv("EDGEPARETO_AGENT_TOKEN_FILE", raising=False)
    with pytest.raises(UserError, match="EDGEPARETO_AGENT_TOKEN"):
        create_target(f"remote:{agent.url}")
    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="cannot read"):
        create_target(f"remote:{agent.url}")
    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN", "wrong")
    with pytest.raises(UserError, match="refused the token"):
        create_target(f"remote:{agent.url}").check()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    with pytest.raises(UserError, match="refused the token"):
        create_target(f"remote:{agent.url}").latency(path, (1, 3, 16, 16))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    unreachable = create_target(f"remote:http://127.0.0.1:{closed}")
    with pytest.raises(UserError, match="not reachable"):
        unreachable.check()
    with pytest.raises(UserError, match="not reachable"):
        unreachable.latency(path, (1, 3, 16, 16))
    assert "not reachable" in unreachable.describe()
    for bad in ("remote:", "remote:127.0.0.1:8765", "remote:ftp://h:1", "remote:http://h", "remote:http://h:1/x",
                "remote:http://h:99999"):
        with pytest.raises(UserError, match="URL"):
            create_target(bad)
    with pytest.raises(UserError, match="URL"):
        create_target("remote")
