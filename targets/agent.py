"""``edgepareto agent``: the latency-measurement agent that runs ON the embedded device.

It imports only the standard library, numpy and onnxruntime, so it runs both as
``edgepareto agent ...`` and as this one file copied to a device that has nothing else installed
(a Raspberry Pi with ``pip install numpy onnxruntime``)::

    python agent.py --host 0.0.0.0 --port 8765 --token-file ~/.edgepareto-token

Protocol (HTTP/1.0, JSON answers, every error is ``{"error": "one line"}``):

- ``GET /healthz``: ``{"ok": true}``, no token needed.
- ``GET /v1/info``: onnxruntime, numpy, python and platform versions, cpu count and the limits.
- ``POST /v1/measure?input_shape=1,3,32,32&warmup=10&repeats=50&threads=1``: the body is the raw
  ONNX file; the answer holds ``median_ms``, ``p90_ms`` and the rest of the measurement.

Every request but ``/healthz`` needs ``Authorization: Bearer <token>``. Measurements never overlap:
they take one slot in arrival order, at most ``--max-queue`` requests wait for it, and each is
measured the way the ``host`` target measures (same session options, fixed random float32 input,
warm-up runs, then median and p90 of the timed runs).
"""

from __future__ import annotations

import argparse
import collections
import hmac
import json
import os
import platform
import re
import signal
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import onnxruntime as ort

AGENT_VERSION = "edgepareto-agent/1"
MB = 1_000_000  # the project's MB (decimal), as in ``search.candidate.evaluate``
#: The largest input tensor a request may ask for (float32 elements, 256 MB).
MAX_INPUT_ELEMENTS = 64_000_000
MAX_MESSAGE = 300
#: A rejected request's unread body is drained (and dropped) for at most this long before closing,
#: so the client reads the error instead of a connection reset.
DRAIN_S = 2.0
ROUTES = {"/healthz": "GET", "/v1/info": "GET", "/v1/measure": "POST"}
QUERY = ("input_shape", "warmup", "repeats", "threads")
#: A client that went quiet or away (``socket.timeout`` is not ``TimeoutError`` before Python 3.10).
CLIENT_GONE = (socket.timeout, TimeoutError, ConnectionError)


class HttpError(Exception):
    """An answer other than 200: status code and one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = one_line(message)
        self.headers = headers or {}


class UsageError(Exception):
    """A bad command line or token file: one line on stderr, exit 2."""


class Stop(Exception):
    """SIGTERM: stop serving."""


def session_options(threads: int) -> ort.SessionOptions:
    """How every latency is measured, here and by ``host``: a fixed intra-op thread count, one
    inter-op thread, sequential execution, every graph optimization, quiet logs."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    flat = " ".join(str(text).split()) or "no message"
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def ort_reason(exc: BaseException) -> str:
    """onnxruntime's message without its source location and C++ signature, on one line."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ", r"\1: ", text)
    text = re.sub(r"\S+\.(?:cc|cpp|h):\d+ (?:(?:\w+ )?[\w:~<>]*::[\w~<>]+\([^()]*\)(?: const)? )?", "", text)
    return one_line(text)


def fixed_input(input_shape: tuple[int, ...]) -> np.ndarray:
    """The one input every latency is timed on: fixed random float32 values (seed 0)."""
    return np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)


def time_runs(
    session: Any, feed: dict[str, np.ndarray], warmup: int, repeats: int, deadline: float | None = None,
) -> tuple[list[float], bool]:
    """The one timing loop (the agent on a device, and the ``host`` target here): ``warmup`` untimed
    runs, then the wall-clock seconds of ``repeats`` runs. Past ``deadline`` (a ``perf_counter``
    value) it stops early, after at least one timed run; the flag says whether it did."""
    times: list[float] = []
    for i in range(warmup):
        if deadline is not None and i and time.perf_counter() > deadline:
            return times, True
        session.run(None, feed)
    for _ in range(repeats):
        if deadline is not None and times and time.perf_counter() > deadline:
            return times, True
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return times, False


class Slot:
    """One measurement at a time, first come first served, with a bounded number of waiters.

    ``admit`` reserves a place (``busy`` when ``max_queue`` requests already wait behind the one
    measuring), ``acquire`` waits in arrival order for the slot, ``release`` and ``leave`` undo them.
    """

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._admitted = 0
        self._busy = False
        self._queue: collections.deque[object] = collections.deque()

    def admit(self) -> None:
        with self._cond:
            if self._admitted >= self.max_queue + 1:
                raise HttpError(503, f"busy: {self.max_queue} request(s) already wait for the slot")
            self._admitted += 1

    def leave(self) -> None:
        with self._cond:
            self._admitted -= 1

    def acquire(self, timeout_s: float) -> None:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            ok = self._cond.wait_for(lambda: not self._busy and self._queue[0] is ticket, timeout_s)
            if not ok:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise HttpError(503, f"busy: waited {timeout_s:g} s for the measurement slot")
            self._queue.popleft()
            self._busy = True

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()


class Agent:
    """Settings and state shared by the request handlers."""

    def __init__(
        self, token: str, max_model_bytes: int, max_queue: int, timeout_s: float, threads_max: int
    ) -> None:
        self.token = token.encode()
        self.max_model_bytes = max_model_bytes
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.threads_max = threads_max
        self.slot = Slot(max_queue)

    def info(self) -> dict[str, Any]:
        return {
            "agent": AGENT_VERSION,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "system": platform.system(),
            "release": platform.release(),
            "cpu_count": os.cpu_count(),
            "providers": list(ort.get_available_providers()),
            "max_model_bytes": self.max_model_bytes,
            "max_queue": self.max_queue,
            "threads_max": self.threads_max,
            "timeout_s": self.timeout_s,
        }

    def authorized(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token)

    def parse_query(self, query: str) -> dict[str, Any]:
        """input_shape (required), warmup, repeats, threads; a ``400`` names the first bad one."""
        try:
            pairs = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise HttpError(400, "malformed query string") from None
        unknown = sorted(set(pairs) - set(QUERY))
        if unknown:
            known = ", ".join(QUERY)
            raise HttpError(400, f"unknown query parameter(s) {', '.join(unknown)}; known: {known}")
        repeated = [k for k, v in pairs.items() if len(v) > 1]
        if repeated:
            raise HttpError(400, f"query parameter {repeated[0]} given more than once")
        if "input_shape" not in pairs:
            raise HttpError(400, "input_shape is required, e.g. input_shape=1,3,224,224")
        try:
            shape = tuple(int(d) for d in pairs["input_shape"][0].split(","))
        except ValueError:
            shape = ()
        if not shape or len(shape) > 8 or any(d < 1 for d in shape):
            raise HttpError(400, "input_shape must be 1 to 8 positive integers separated by commas")
        if int(np.prod(shape, dtype=np.float64)) > MAX_INPUT_ELEMENTS:
            raise HttpError(400, f"input_shape has more than {MAX_INPUT_ELEMENTS} elements")
        out: dict[str, Any] = {"input_shape": shape}
        for name, default, low, high in (
            ("warmup", 10, 0, 1000), ("repeats", 50, 1, 10000), ("threads", 1, 1, self.threads_max)
        ):
            text = pairs.get(name, [str(default)])[0]
            try:
                value = int(text)
            except ValueError:
                raise HttpError(400, f"{name} must be an integer, not {text!r}") from None
            if not low <= value <= high:
                raise HttpError(400, f"{name} must be in {low}..{high}, not {value}")
            out[name] = value
        return out

    def measure(self, model: bytes, input_shape: tuple[int, ...], warmup: int, repeats: int,
                threads: int) -> dict[str, Any]:
        """Load and time ``model``; the caller holds the slot. A bad model or shape is a ``400``."""
        try:
            session = ort.InferenceSession(
                model, session_options(threads), providers=["CPUExecutionProvider"]
            )
            inputs = session.get_inputs()
        except Exception as exc:
            raise HttpError(400, f"cannot load model: {ort_reason(exc)}") from None
        del model
        if not inputs:
            raise HttpError(400, "cannot measure a model without inputs")
        feed = {inputs[0].name: fixed_input(input_shape)}
        started = time.time()
        try:
            times, truncated = time_runs(session, feed, warmup, repeats, time.perf_counter() + self.timeout_s)
        except Exception as exc:
            shape = ",".join(map(str, input_shape))
            raise HttpError(400, f"cannot run model on float32 input {shape}: {ort_reason(exc)}") from None
        finished = time.time()
        t = np.asarray(times)
        return {
            "median_ms": float(np.median(t) * 1e3),
            "p90_ms": float(np.percentile(t, 90) * 1e3),
            "mean_ms": float(t.mean() * 1e3),
            "min_ms": float(t.min() * 1e3),
            "repeats": len(times),
            "warmup": warmup,
            "threads": threads,
            "truncated": truncated,
            "started_at": started,
            "finished_at": finished,
            "input_shape": list(input_shape),
            "onnxruntime": ort.__version__,
            "machine": platform.machine(),
        }


class Handler(BaseHTTPRequestHandler):
    """One request: route, authorise, validate, measure; every answer is JSON."""

    server_version = AGENT_VERSION
    protocol_version = "HTTP/1.0"  # one request per connection
    timeout = 60  # socket reads: a client that never sends its body cannot hold a thread
    agent: Agent  # set on the subclass that ``serve`` builds

    # -- dispatch ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self._t0 = time.perf_counter()
        self._status = 0
        self._unread = self._content_length_or_zero()
        try:
            path = urlsplit(self.path).path
            if path not in ROUTES:
                raise HttpError(404, f"no such endpoint {path}; known: {', '.join(ROUTES)}")
            if method != ROUTES[path]:
                raise HttpError(405, f"{path} takes {ROUTES[path]}, not {method}", {"Allow": ROUTES[path]})
            if path == "/healthz":
                self._send_json(200, {"ok": True})
                return
            if not self.agent.authorized(self.headers.get("Authorization")):
                raise HttpError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            if path == "/v1/info":
                self._send_json(200, self.agent.info())
            else:
                self._measure()
        except HttpError as exc:
            self._send_error_json(exc.status, exc.message, exc.headers)
        except CLIENT_GONE as exc:
            self._send_error_json(408, f"request not received: {type(exc).__name__}: {one_line(exc)}")
        except Exception as exc:  # never let a request take the server down
            self.log_message("internal error: %s", traceback.format_exc().rstrip())
            self._send_error_json(500, f"internal error: {type(exc).__name__}: {one_line(exc)}")
        finally:
            self._drain()
            self._log_request()

    def _measure(self) -> None:
        agent = self.agent
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise HttpError(411, "Content-Length is required (send the ONNX file as the body)")
        try:
            length = int(length_text)
        except ValueError:
            raise HttpError(400, f"bad Content-Length {length_text!r}") from None
        if length < 0:
            raise HttpError(400, f"bad Content-Length {length_text!r}")
        if length > agent.max_model_bytes:
            self.close_connection = True
            raise HttpError(
                413, f"model is {length} bytes, over the agent's limit of {agent.max_model_bytes} bytes "
                "(--max-model-mb)"
            )
        if length == 0:
            raise HttpError(400, "empty body: send the ONNX file")
        params = agent.parse_query(urlsplit(self.path).query)
        agent.slot.admit()
        try:
            model = self._read_body(length)
            queued = time.perf_counter()
            agent.slot.acquire(agent.timeout_s)
            try:
                start = time.perf_counter()
                result = agent.measure(model, **params)
                del model
                result["measure_s"] = time.perf_counter() - start
            finally:
                agent.slot.release()
            result["queued_s"] = start - queued
        finally:
            agent.slot.leave()
        self._send_json(200, result)

    # -- I/O ---------------------------------------------------------------------------------
    def _content_length_or_zero(self) -> int:
        try:
            return max(int(self.headers.get("Content-Length") or 0), 0)
        except ValueError:
            return 0

    def _read_body(self, length: int) -> bytes:
        """Exactly ``length`` bytes, within the socket timeout per read and twice it in all."""
        deadline = time.monotonic() + 2 * self.timeout
        chunks, got = [], 0
        while got < length:
            if time.monotonic() > deadline:
                raise TimeoutError(f"body not complete after {2 * self.timeout} s")
            chunk = self.rfile.read1(min(length - got, 1 << 20))
            if not chunk:
                raise HttpError(400, f"body ended after {got} of {length} bytes")
            chunks.append(chunk)
            got += len(chunk)
        self._unread = 0
        return b"".join(chunks)

    def _drain(self) -> None:
        """Drop a rejected request's unread body for a moment, so the client can read our answer."""
        if self._unread <= 0:
            return
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(DRAIN_S)
            deadline = time.monotonic() + DRAIN_S
            left = self._unread
            while left > 0 and time.monotonic() < deadline:
                chunk = self.connection.recv(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = (json.dumps(body) + "\n").encode()
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error_json(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        try:
            self._send_json(status, {"error": one_line(message)}, headers)
        except OSError:
            self._status = self._status or status  # the client is gone; nothing more to do

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own errors (bad request line, unknown method) as JSON too."""
        self._t0 = getattr(self, "_t0", time.perf_counter())
        self.close_connection = True
        self._send_error_json(code, message or self.responses.get(code, ("error",))[0])
        self._log_request()

    # -- logging -----------------------------------------------------------------------------
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is written by ``_log_request`` once the answer is sent

    def _log_request(self) -> None:
        ms = (time.perf_counter() - self._t0) * 1e3
        method = getattr(self, "command", None) or "-"
        path = urlsplit(getattr(self, "path", "") or "-").path
        self.log_message("%s %s %s %.1fms", method, path, self._status or "-", ms)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.log_date_time_string()} {self.client_address[0]} {format % args}\n")
        sys.stderr.flush()


class Server(ThreadingHTTPServer):
    """Daemon threads; an error that escapes a handler is one line on stderr, never fatal."""

    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        sys.stderr.write(f"{client_address[0]} connection error: {type(exc).__name__}: {one_line(exc)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgepareto agent",
        description="Serve latency measurements of ONNX files over HTTP, on the device itself.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    parser.add_argument("--token-file", required=True, help="file holding the bearer token clients send")
    parser.add_argument("--max-model-mb", type=float, default=64.0, help="largest ONNX body (default 64)")
    parser.add_argument("--max-queue", type=int, default=8, help="requests that may wait (default 8)")
    parser.add_argument(
        "--timeout-s", type=float, default=120.0,
        help="longest wait for the slot, and longest timed loop (default 120)",
    )
    parser.add_argument("--threads-max", type=int, default=None, help="most threads a request may ask for "
                        "(default: the cpu count)")
    return parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message)


def check_token(token: str, where: str, min_length: int = 1) -> str:
    """The one rule for a bearer token, wherever it comes from (the agent's and the service's token
    files, ``$EDGEPARETO_TOKEN``, ``$EDGEPARETO_AGENT_TOKEN``): surrounding whitespace is dropped, and
    what is left is one printable word of at least ``min_length`` characters."""
    token = token.strip()
    if not token:
        raise UsageError(f"{where} is empty")
    if any(c.isspace() for c in token) or not token.isprintable():
        raise UsageError(f"{where} must hold one token without spaces")
    if len(token) < min_length:
        raise UsageError(f"{where}: the token is too short ({len(token)} characters; at least {min_length})")
    return token


def read_token(path: str, min_length: int = 1) -> str:
    """The token in the file ``path`` (``~`` expanded), by :func:`check_token`'s rule."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return check_token(text, f"token file {path}", min_length)


def serve(args: argparse.Namespace, token: str) -> Server:
    """Bind the server (not yet serving)."""
    agent = Agent(
        token, int(args.max_model_mb * MB), args.max_queue, args.timeout_s,
        args.threads_max or os.cpu_count() or 1,
    )
    handler = type("AgentHandler", (Handler,), {"agent": agent})
    server_class = type("Server6", (Server,), {"address_family": socket.AF_INET6}) if ":" in args.host \
        else Server
    try:
        return server_class((args.host, args.port), handler)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    """Run the agent until Ctrl-C (exit 130) or SIGTERM (exit 0); usage errors exit 2."""
    try:
        args = build_parser().parse_args(argv)
        checks = (
            (0 <= args.port <= 65535, "--port must be in 0..65535"),
            (args.max_model_mb > 0, "--max-model-mb must be positive"),
            (args.max_queue >= 0, "--max-queue must be 0 or more"),
            (args.timeout_s > 0, "--timeout-s must be positive"),
            (args.threads_max is None or args.threads_max >= 1, "--threads-max must be at least 1"),
        )
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        server = serve(args, read_token(args.token_file))
    except UsageError as exc:
        print(f"edgepareto agent: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"edgepareto agent listening on http://{shown}:{port}", flush=True)
    if host not in ("127.0.0.1", "::1", "localhost"):
        print("edgepareto agent: warning: plain HTTP beyond this machine: the token and models travel "
              "unencrypted; use a trusted network or a tunnel", file=sys.stderr, flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("edgepareto agent: interrupted, stopped", file=sys.stderr)
        return 130
    except Stop:
        print("edgepareto agent: terminated, stopped", file=sys.stderr)
        return 0
    finally:
        server.server_close()
    return 0


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
