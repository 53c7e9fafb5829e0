"""The device measurement agent (``edgepareto agent``) in a subprocess on loopback, for the agent tests
and the searches that measure through it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.support.cli import ROOT

TOKEN = "test-token-123"
#: Runs the agent through the CLI with torch made unimportable: proves the agent never needs it.
NO_TORCH = (
    "import sys; sys.modules['torch'] = None; from search.cli.main import main; sys.exit(main(sys.argv[1:]))"
)
#: The agent's --max-model-mb: the tiny timm model's ONNX file is about 1.5 MB.
LIMIT = 2_000_000
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Agent:
    """A running agent (a subprocess, or None when it serves in this process)."""

    def __init__(self, proc: subprocess.Popen | None, port: int, scheme: str = "http") -> None:
        self.proc = proc
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"

    def request(
        self, path: str, data: bytes | None = None, token: str | None = TOKEN, method: str | None = None,
        timeout: float = 60,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, headers); HTTP errors are answers, not exceptions."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with NO_PROXY.open(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)

    def measure(self, model: bytes, query: str = "input_shape=1,3,16,16&warmup=2&repeats=20", **kw: Any):
        return self.request(f"/v1/measure?{query}", data=model, **kw)


def raw(agent: Agent, request: bytes, hang_up: bool = False) -> bytes:
    """Send bytes on a fresh connection; everything the agent answers until it closes."""
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
        s.sendall(request)
        if hang_up:
            return b""
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def start_agent(tmp: Path, *extra: str, command: list[str] | None = None, cwd: Path = ROOT) -> Agent:
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    cmd = command or [sys.executable, "-c", NO_TORCH, "agent"]
    proc = subprocess.Popen(
        [*cmd, "--port", "0", "--token-file", str(token_file), *extra],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    line = proc.stdout.readline()
    if "listening on http://127.0.0.1:" not in line and "listening on https://127.0.0.1:" not in line:
        proc.kill()
        raise AssertionError(f"agent did not start: {line!r} {proc.stderr.read()}")
    return Agent(proc, int(line.rsplit(":", 1)[1]), "https" if "https://" in line else "http")


def stop_agent(agent: Agent) -> str:
    """SIGTERM; the agent must stop cleanly (exit 0, no traceback). Returns its stderr."""
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    code = agent.proc.wait(timeout=10)
    err = agent.proc.stderr.read()
    agent.proc.stdout.close()
    agent.proc.stderr.close()
    assert code == 0, err
    assert "Traceback" not in err, err
    return err


def heavy_model() -> bytes:
    """Small on disk, slow to run: four 16-channel 3x3 convolutions on a 1x16xHxW input."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16, 3, 3), np.float32), "w")
    names = ["x", "h1", "h2", "h3", "y"]
    nodes = [helper.make_node("Conv", [names[i], "w"], [names[i + 1]], pads=[1] * 4) for i in range(4)]
    graph = helper.make_graph(
        nodes, "heavy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, "H", "W"])], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return model.SerializeToString()


def endless_model() -> bytes:
    """A hostile model: a Loop of 2**62 additions on a float input of shape (1,), which never ends."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "cond", "x"], ["y"], body=body)], "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array(2**62, np.int64), "n"),
         numpy_helper.from_array(np.array(True), "cond")],
    )
    return _serialized(graph)


def greedy_model(elements: int) -> bytes:
    """A hostile model: on a float input of shape (1,) it fills a tensor of ``elements`` floats (made at
    run time, so it is not folded away when the session loads) and sums it."""
    fill = numpy_helper.from_array(np.array([1.0], np.float32))
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Mul", ["s", "n"], ["size"]),
         helper.make_node("ConstantOfShape", ["size"], ["z"], value=fill),
         helper.make_node("ReduceSum", ["z"], ["y"], keepdims=0)],
        "greedy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array([elements], np.int64), "n")],
    )
    return _serialized(graph)


def _serialized(graph: Any) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return model.SerializeToString()


def external_data_model(location: str) -> bytes:
    """A model whose one weight (4 floats) is read from the external data file ``location``."""
    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight],
    )
    return _serialized(graph)
