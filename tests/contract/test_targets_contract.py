"""Every registered latency target honours the ``Target`` contract on a tiny ONNX model: ``check()``,
a positive finite latency labelled by ``measures``, a one-line ``describe()``, ``exclusive()`` as a
context manager (also around measurements, as the final side-by-side pass uses it) and
``local_device``. ``remote`` talks to a real ``edgepareto agent`` started on loopback."""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import targets
from search.core.errors import UserError
from targets import TARGETS, Latency, Target, create_target
from targets.remote import TOKEN_ENV, TOKEN_FILE_ENV
from tests.support.agent import TOKEN, Agent, start_agent, stop_agent

INPUT_SHAPE = (1, 3, 16, 16)
NAMES = TARGETS.names()


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    torch.manual_seed(0)
    torch.onnx.export(TinyNet().eval(), (torch.zeros(INPUT_SHAPE),), str(path), input_names=["input"],
                      output_names=["logits"], dynamo=False)
    return path


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[Agent]:
    running = start_agent(tmp_path_factory.mktemp("agent"))
    yield running
    stop_agent(running)


@pytest.fixture(autouse=True)
def _own_locks_and_token(tmp_path, monkeypatch):
    """This machine's device slot in a folder of the test's own (nobody else's measurements wait on
    it, nor it on theirs), and the agent's token where the remote target reads it."""
    monkeypatch.setenv("EDGEPARETO_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)


@pytest.fixture(params=NAMES)
def target(request) -> Target:
    name = request.param
    if name == "remote":
        url = request.getfixturevalue("agent").url
        return create_target(f"remote:{url}", threads=1, repeats=10)
    return create_target(name, threads=1, repeats=10)


def test_every_kind_of_target_is_registered():
    assert targets.TARGETS is TARGETS
    assert "host" in NAMES and "remote" in NAMES
    profiles = [n for n in NAMES if n not in ("host", "remote")]
    assert profiles, "no device profile registered"


def test_it_is_a_target_with_a_name(target, request):
    name = request.node.callspec.params["target"]
    assert isinstance(target, Target)
    assert isinstance(target.name, str) and target.name
    assert target.name == name or (name == "remote" and target.name.startswith("remote:http://127.0.0.1:"))


def test_check_answers_a_dict(target):
    info = target.check()
    assert isinstance(info, dict)
    if target.name.startswith("remote:"):  # what the agent said about its device
        assert info["threads_max"] >= 1 and info["onnxruntime"]


def check_latency(target: Target, lat: Latency) -> None:
    assert isinstance(lat, Latency)
    assert math.isfinite(lat.median_ms) and lat.median_ms > 0
    assert math.isfinite(lat.p90_ms) and lat.p90_ms >= lat.median_ms
    assert lat.threads == 1
    assert lat.target == target.name
    assert isinstance(lat.repeats, int) and lat.repeats >= 0
    if target.measures:
        assert lat.source.startswith("measured"), lat.source
        assert lat.repeats == 10
    else:
        assert lat.source.startswith("predicted"), lat.source


def test_latency_is_positive_finite_and_labelled_by_measures(target, onnx_model):
    lat = target.latency(onnx_model, INPUT_SHAPE)
    check_latency(target, lat)
    if not target.measures:  # a prediction is the same every time: the final pass asks once
        assert target.latency(onnx_model, INPUT_SHAPE) == lat


def test_exclusive_is_a_context_manager_that_measurements_run_in(target, onnx_model):
    hold = target.exclusive()
    assert isinstance(hold, contextlib.AbstractContextManager)
    with hold:
        check_latency(target, target.latency(onnx_model, INPUT_SHAPE))
        check_latency(target, target.latency(onnx_model, INPUT_SHAPE))
    with target.exclusive():  # and again afterwards: the hold was given back
        pass


def test_describe_is_one_line(target):
    text = target.describe()
    assert isinstance(text, str) and text.strip()
    assert "\n" not in text
    assert text.startswith(target.name)


def test_local_device_is_a_slot_name_or_none(target):
    device = target.local_device
    assert device is None or (isinstance(device, str) and device)
    if not target.measures:  # nothing timed, no slot of this machine to occupy
        assert device is None
    if target.name.startswith("remote:"):  # timed on the device, not here
        assert device is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_remote_is_a_one_line_user_error():
    target = create_target(f"remote:http://127.0.0.1:{free_port()}", threads=1, repeats=10)
    with pytest.raises(UserError) as err:
        target.check()
    assert "is not reachable" in str(err.value)
    assert "\n" not in str(err.value)
    described = target.describe()  # says so, still on one line
    assert "not reachable now" in described and "\n" not in described


def test_a_remote_refusing_the_token_is_a_one_line_user_error(agent, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    target = create_target(f"remote:{agent.url}", threads=1, repeats=10)
    with pytest.raises(UserError) as err:
        target.check()
    assert f"agent {agent.url} refused the token (401" in str(err.value)
    assert "\n" not in str(err.value)
