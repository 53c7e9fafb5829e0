"""A hostile or broken model does not take the agent down (each measurement runs in a child process
under a memory and a time limit), and models are kept by sha256 so a client sends each file once."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from search.core.errors import CandidateError
from targets.remote import RemoteTarget
from tests.support.agent import (
    TOKEN,
    Agent,
    endless_model,
    external_data_model,
    greedy_model,
    heavy_model,
    start_agent,
    stop_agent,
)
from tests.support.runs import wait_until
from tests.support.service import descendants

#: The query of the hostile models: one run on a float input of shape (1,).
ONE_RUN = "input_shape=1&warmup=0&repeats=1"
GOOD = "input_shape=1,16,8,8&warmup=1&repeats=3"


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> Iterator[Agent]:
    """An agent whose measurements may use 1 GB of address space and run for 5 s."""
    running = start_agent(
        tmp_path_factory.mktemp("limited"), "--max-memory-mb", "1024", "--max-measure-s", "5",
        "--cache-models", "2",
    )
    yield running
    stop_agent(running)


def _still_serves(agent: Agent) -> None:
    assert agent.proc is not None and agent.proc.poll() is None
    status, body, _ = agent.measure(heavy_model(), GOOD)
    assert status == 200 and body["repeats"] == 3, body


@pytest.mark.slow  # waits out the agent's run limit in a child process (5-6 s)
def test_a_model_that_never_ends_is_stopped(limited):
    status, body, _ = limited.measure(endless_model(), ONE_RUN)
    assert status == 422 and body["error"].startswith("measurement stopped: still running after 5 s"), body
    _still_serves(limited)


def test_a_model_over_the_memory_limit_fails_alone(limited):
    status, body, _ = limited.measure(greedy_model(2**30), ONE_RUN)  # 4 GB of floats, over the 1 GB limit
    assert status == 422 and body["error"].startswith("out of memory under the 1024 MB limit"), body
    status, body, _ = limited.measure(greedy_model(1000), ONE_RUN)  # the same graph, small: it runs
    assert status == 200, body
    _still_serves(limited)


def _running(pid: int) -> bool:
    """``pid`` is on a CPU or waiting for one (state R), not asleep waiting for a job."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] == "R"


def test_a_crash_of_the_measuring_process_fails_that_request_only(limited):
    """The measuring process dies of SIGSEGV (sent to it while it works on the endless model), as when
    onnxruntime crashes: that request is a 422 naming the signal, and the agent measures the next."""
    answers: list[tuple[int, dict[str, Any]]] = []

    def measure() -> None:
        status, body, _ = limited.measure(endless_model(), ONE_RUN)
        answers.append((status, body))

    client = threading.Thread(target=measure)
    client.start()
    assert limited.proc is not None
    agent_pid = limited.proc.pid
    busy = wait_until(lambda: [p for p in descendants(agent_pid) if _running(p)], 30,
                      "a busy measuring process", poll=0.05)
    for pid in busy:
        os.kill(pid, signal.SIGSEGV)
    client.join(60)
    [(status, body)] = answers
    assert status == 422 and body["error"].startswith("the measuring process died of SIGSEGV"), body
    _still_serves(limited)


def test_models_are_kept_by_hash_and_sent_once(limited, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN", TOKEN)
    path = tmp_path / "heavy.onnx"
    path.write_bytes(heavy_model())
    before = limited.request("/v1/info")[1]["cache"]
    target = RemoteTarget(limited.url, repeats=5, warmup=1)
    first = target.latency(path, (1, 16, 8, 8))
    after_first = limited.request("/v1/info")[1]["cache"]
    second = target.latency(path, (1, 16, 8, 8))
    after_second = limited.request("/v1/info")[1]["cache"]
    assert first.repeats == second.repeats == 5
    # the first measurement asked by hash and may have uploaded (the model may be held already);
    # the second one sends nothing
    assert after_first["uploads"] - before["uploads"] <= 1
    assert after_second["uploads"] == after_first["uploads"]
    assert after_second["hits"] == after_first["hits"] + 1 and after_second["misses"] == after_first["misses"]
    assert after_second["models"] <= after_second["max_models"] == 2


def test_the_cache_is_bounded_and_a_dropped_model_is_sent_again(limited, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN", TOKEN)
    target = RemoteTarget(limited.url, repeats=3, warmup=0)
    paths = []
    for n in (10, 20, 30):  # three different models through a cache of two
        paths.append(tmp_path / f"greedy{n}.onnx")
        paths[-1].write_bytes(greedy_model(n))
        target.latency(paths[-1], (1,))
    cache = limited.request("/v1/info")[1]["cache"]
    assert cache["models"] == 2 and cache["evicted"] >= 1
    uploads = cache["uploads"]
    target.latency(paths[0], (1,))  # dropped: asked by hash, missed, sent again
    assert limited.request("/v1/info")[1]["cache"]["uploads"] == uploads + 1


def test_the_models_endpoint(limited):
    import hashlib

    data = greedy_model(7)
    sha = hashlib.sha256(data).hexdigest()
    assert limited.request(f"/v1/models/{'0' * 64}")[0] == 404
    status, body, _ = limited.request(f"/v1/models/{'0' * 64}", data=data, method="PUT")
    assert status == 400 and "sha256" in body["error"]  # the body is not what the name says
    assert limited.request("/v1/models/not-a-hash")[0] == 400
    assert limited.request(f"/v1/models/{sha}", data=data, method="PUT")[0] == 201
    assert limited.request(f"/v1/models/{sha}")[1] == {"sha256": sha, "bytes": len(data)}
    status, body, _ = limited.request(f"/v1/measure?model={sha}&{ONE_RUN}", data=b"", method="POST")
    assert status == 200 and body["sha256"] == sha
    status, body, _ = limited.request(f"/v1/measure?model={sha}&{ONE_RUN}", data=data, method="POST")
    assert status == 400 and "not both" in body["error"]
    assert limited.request(f"/v1/models/{sha}", token=None)[0] == 401


@pytest.mark.slow  # waits out the agent's run limit in a child process (5-6 s)
def test_a_hostile_model_through_the_remote_target_is_a_failed_candidate(limited, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN", TOKEN)
    path = tmp_path / "endless.onnx"
    path.write_bytes(endless_model())
    with pytest.raises(CandidateError, match="422 measurement stopped"):
        RemoteTarget(limited.url, repeats=1, warmup=0).latency(path, (1,))
    _still_serves(limited)


def test_a_model_cannot_read_files_beside_it(limited):
    """External data a model names is looked up in the measuring process's empty working folder:
    neither another cached model (by its file name, or through ``..``) nor a path elsewhere is read."""
    import hashlib

    held = greedy_model(11)
    sha = hashlib.sha256(held).hexdigest()
    assert limited.request(f"/v1/models/{sha}", data=held, method="PUT")[0] == 201
    for location in (f"{sha}.onnx", f"../{sha}.onnx", "/etc/hostname"):
        status, body, _ = limited.measure(external_data_model(location), "input_shape=4&warmup=0&repeats=1")
        assert status == 400 and body["error"].startswith("cannot load model:"), (location, body)
    _still_serves(limited)
