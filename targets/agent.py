"""``edgepareto agent``: the latency-measurement agent that runs ON the embedded device.

It imports only the standard library, numpy and onnxruntime, so it runs both as
``edgepareto agent ...`` and as this one file copied to a device that has nothing else installed
(a Raspberry Pi with ``pip install numpy onnxruntime``)::

    python agent.py --host 0.0.0.0 --port 8765 --token-file ~/.edgepareto-token

Protocol (HTTP/1.0, JSON answers, every error is ``{"error": "one line"}``):

- ``GET /healthz``: ``{"ok": true}``, no token needed.
- ``GET /v1/info``: onnxruntime, numpy, python and platform versions, cpu count, the limits and the
  model cache's counts (``cache.uploads``: model bodies received).
- ``GET /v1/models/SHA256``: 200 when the agent holds that model, else 404. ``PUT`` it there (the
  raw ONNX file as the body, checked against the hash) to store it.
- ``POST /v1/measure?model=SHA256&input_shape=1,3,32,32&warmup=10&repeats=50&threads=1``: measure a
  stored model (404 when it is not held: upload it, then ask again); or, without ``model=``, with the
  raw ONNX file as the body (stored too). The answer holds ``median_ms``, ``p90_ms`` and the rest.
  With ``profile=1`` it also holds ``nodes``: every executed node of the optimized graph (fused
  kernels included) by name, with its op type and mean microseconds per run from onnxruntime's
  profiler (``profile_nodes``), which kernel-level calibration fits.

Every request but ``/healthz`` needs ``Authorization: Bearer <token>``. Measurements never overlap:
they take one slot in arrival order, at most ``--max-queue`` requests wait for it, and each is
measured the way the ``host`` target measures (same session options, fixed random float32 input,
warm-up runs, then median and p90 of the timed runs). Models are measured in a separate process
(started once and kept; a fresh one after a crash, a limit or 100 jobs) under a memory limit
(``--max-memory-mb``) and a time limit (``--max-measure-s``): a model that crashes onnxruntime or
exceeds a limit fails that request (422), and the agent goes on serving. Models are
kept by sha256, least recently used dropped beyond ``--cache-models`` files or ``--cache-mb``. With
``--tls-cert`` and ``--tls-key`` it speaks HTTPS.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
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
ROUTES = {"/healthz": ("GET",), "/v1/info": ("GET",), "/v1/measure": ("POST",),
          "/v1/models/{sha256}": ("GET", "PUT")}
MODELS_PREFIX = "/v1/models/"
QUERY = ("model", "input_shape", "warmup", "repeats", "threads", "profile")
#: onnxruntime's profiler names each executed node's event ``<node name>_kernel_time``.
KERNEL_EVENT = "_kernel_time"
#: Share of the slowest profiled runs of a node left out of its mean (a preempted run).
PROFILE_TRIM = 0.2
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: The TLS handshake of a new connection must end within this many seconds (it runs in the
#: connection's own thread, so a slow client holds only that thread).
HANDSHAKE_S = 10.0
#: A measurement runs in a fresh Python that loads this very file as a module, so it works both for
#: the installed package and for this file copied alone to a device.
AGENT_FILE = os.path.abspath(__file__)
CHILD_CODE = (
    "import importlib.util as u, sys; s = u.spec_from_file_location('edgepareto_measure', sys.argv[1]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); sys.exit(m.child_main())"
)
#: Beyond the timed loop's own ``--timeout-s``, how long loading and warming up may take before the
#: measuring process is killed (the default of ``--max-measure-s`` is their sum).
LOAD_ALLOWANCE_S = 60.0
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


def profile_nodes(
    model: bytes | str, input_shape: tuple[int, ...], threads: int, runs: int, warmup: int = 5,
) -> dict[str, tuple[str, float]]:
    """Per-node timings from onnxruntime's profiler (``SessionOptions.enable_profiling``) under the
    measuring session options: each executed node of the optimized graph, by name, with its op type
    and its mean microseconds per run over ``runs`` runs after ``warmup`` (the slowest
    ``PROFILE_TRIM`` of its runs left out). The profiler records whole microseconds; the mean over
    runs resolves a node below that. Its JSON file is written to a temporary folder and removed."""
    with tempfile.TemporaryDirectory(prefix="edgepareto-profile-") as tmp:
        opts = session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: fixed_input(input_shape)}
        for _ in range(warmup + runs):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    durations: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith(KERNEL_EVENT):
            continue
        node = name[: -len(KERNEL_EVENT)]
        durations.setdefault(node, []).append(float(event["dur"]))
        ops[node] = str(event.get("args", {}).get("op_name", ""))
    out = {}
    for node, times in durations.items():
        kept = np.sort(np.asarray(times[-runs:]))  # the last ``runs``: the warm-up's come first
        kept = kept[: max(1, int(round(len(kept) * (1 - PROFILE_TRIM))))]
        out[node] = (ops[node], float(kept.mean()))
    return out


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


class ModelCache:
    """Models by sha256, as files in ``folder``: the least recently used are dropped beyond
    ``max_models`` files or ``max_bytes`` bytes, except one that a measurement holds (``pinned``).

    ``uploads`` counts the model bodies received, ``hits`` and ``misses`` the measurements asked for by
    hash that found, or did not find, their model."""

    def __init__(self, folder: str, max_models: int, max_bytes: int) -> None:
        self.folder = folder
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._pins: collections.Counter[str] = collections.Counter()
        self.uploads = self.hits = self.misses = self.evicted = 0

    def path(self, sha: str) -> str:
        return os.path.join(self.folder, f"{sha}.onnx")

    def size(self, sha: str) -> int | None:
        """The stored model's size in bytes, or None when the cache does not hold it."""
        with self._lock:
            return self._sizes.get(sha)

    def add(self, data: bytes, sha: str | None = None) -> str:
        """Store ``data`` (when ``sha`` is given, it must be the data's sha256: 400 otherwise); returns
        the hash."""
        digest = hashlib.sha256(data).hexdigest()
        if sha is not None and digest != sha:
            raise HttpError(400, f"the body's sha256 is {digest}, not {sha}")
        with self._lock:
            self.uploads += 1
        tmp = f"{self.path(digest)}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path(digest))
        with self._lock:
            self._sizes[digest] = len(data)
            self._sizes.move_to_end(digest)
            self._evict(keep=digest)
        return digest

    @contextlib.contextmanager
    def pinned(self, sha: str) -> Iterator[str]:
        """The stored model's path, kept while the block runs; a ``404`` when it is not held."""
        with self._lock:
            if sha not in self._sizes:
                self.misses += 1
                raise HttpError(404, f"model {sha} is not held here: PUT it to {MODELS_PREFIX}{sha}")
            self.hits += 1
            self._sizes.move_to_end(sha)
            self._pins[sha] += 1
        try:
            yield self.path(sha)
        finally:
            with self._lock:
                self._pins[sha] -= 1
                if not self._pins[sha]:
                    del self._pins[sha]
                self._evict()

    def _evict(self, keep: str | None = None) -> None:
        """Drop the least recently used unpinned models until within bounds (the lock is held)."""
        for sha in list(self._sizes):
            if len(self._sizes) <= self.max_models and sum(self._sizes.values()) <= self.max_bytes:
                return
            if sha == keep or self._pins[sha]:
                continue
            del self._sizes[sha]
            self.evicted += 1
            with contextlib.suppress(OSError):
                os.remove(self.path(sha))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "models": len(self._sizes), "bytes": sum(self._sizes.values()),
                "max_models": self.max_models, "max_bytes": self.max_bytes,
                "uploads": self.uploads, "hits": self.hits, "misses": self.misses, "evicted": self.evicted,
            }


class Measurer:
    """The measuring process: a Python that loads this file, sets its memory limit, then measures one
    job at a time (a JSON line in, a JSON line out). It is started on first use and kept, so a
    measurement does not pay for importing onnxruntime; it is killed when a job overruns
    ``max_measure_s``, replaced when it died, ran out of memory or served ``MAX_USES`` jobs."""

    #: Jobs one measuring process serves before a fresh one replaces it (memory it fragmented).
    MAX_USES = 100
    #: How long a new measuring process may take to import numpy and onnxruntime.
    START_S = 120.0

    def __init__(
        self, workdir: str, log_path: str, max_memory_bytes: int | None, max_measure_s: float,
    ) -> None:
        self.workdir = workdir
        self.log_path = log_path
        self.max_memory_bytes = max_memory_bytes
        self.max_measure_s = max_measure_s
        self._proc: subprocess.Popen | None = None
        self._uses = 0
        self._lock = threading.Lock()

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job's answer (``status`` and ``result`` or ``error``); a ``422`` when the process
        overran the time limit or died on it, a ``500`` when it failed otherwise."""
        with self._lock:
            proc = self._ready()
            try:
                self._send(proc, job)
            except OSError:  # it died while idle (killed from outside): one fresh try
                self._discard()
                proc = self._ready()
                self._send(proc, job)
            line = _read_line(proc, self.max_measure_s)
            if line is None:
                self._discard()
                limit = f"{self.max_measure_s:g} s (--max-measure-s)"
                raise HttpError(422, f"measurement stopped: still running after {limit}")
            if not line:
                raise self._died()
            self._uses += 1
            answer = json.loads(line)
            if self._uses >= self.MAX_USES or answer.get("status") == 422:
                self._discard()
            return answer

    def _ready(self) -> subprocess.Popen:
        """The running measuring process, started (and waited for) when there is none."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._discard()
        with open(self.log_path, "wb") as log:  # its stderr: the last line explains a failure
            self._proc = subprocess.Popen(
                [sys.executable, "-c", CHILD_CODE, AGENT_FILE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, cwd=self.workdir,
            )
        self._uses = 0
        self._send(self._proc, {"max_memory_bytes": self.max_memory_bytes})
        line = _read_line(self._proc, self.START_S)
        if line is None:
            self._discard()
            raise HttpError(500, f"the measuring process did not start within {self.START_S:g} s")
        if not line:
            raise self._died()
        return self._proc

    @staticmethod
    def _send(proc: subprocess.Popen, message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(message) + "\n").encode())
        proc.stdin.flush()

    def _died(self) -> HttpError:
        """The error for a measuring process that ended without answering (it is then discarded)."""
        assert self._proc is not None
        code = self._proc.wait()
        self._discard()
        if code < 0:
            memory = "the machine has" if self.max_memory_bytes is None else \
                f"the {self.max_memory_bytes / MB:g} MB limit (--max-memory-mb)"
            return HttpError(422, f"the measuring process died of {_signal_name(-code)}: onnxruntime crashed "
                             f"on this model, or it needed more memory than {memory}")
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read()[-4096:].decode(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        last = lines[-1] if lines else "no message"
        return HttpError(500, f"the measuring process failed (exit {code}): {one_line(last)}")

    def _discard(self) -> None:
        """Kill the measuring process, if any, and forget it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]  (stdout: a reader thread may still hold it)

    def stop(self) -> None:
        """Kill the measuring process (the agent is stopping), even while it measures."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()


def _read_line(proc: subprocess.Popen, timeout_s: float) -> bytes | None:
    """One line from ``proc``'s stdout (``b""`` when it ended), or None after ``timeout_s``."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout_s)
    return None if reader.is_alive() else got[0]


class Agent:
    """Settings and state shared by the request handlers."""

    def __init__(
        self, token: str, max_model_bytes: int, max_queue: int, timeout_s: float, threads_max: int,
        cache: ModelCache, max_memory_bytes: int | None = None, max_measure_s: float | None = None,
    ) -> None:
        self.token = token.encode()
        self.max_model_bytes = max_model_bytes
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.threads_max = threads_max
        self.cache = cache
        self.max_memory_bytes = max_memory_bytes
        self.max_measure_s = max_measure_s if max_measure_s is not None else timeout_s + LOAD_ALLOWANCE_S
        self.slot = Slot(max_queue)
        #: The measuring process's working folder, always empty: a model is loaded from its bytes, so
        #: the external data files it names resolve here and find nothing (onnxruntime refuses paths
        #: that leave it), never another cached model or a file of the agent's.
        workdir = os.path.join(cache.folder, "empty")
        os.makedirs(workdir, exist_ok=True)
        self.measurer = Measurer(
            workdir, os.path.join(cache.folder, "measure.log"), max_memory_bytes, self.max_measure_s
        )

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
            "max_memory_bytes": self.max_memory_bytes,
            "max_measure_s": self.max_measure_s,
            "cache": self.cache.stats(),
        }

    def authorized(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token)

    def parse_query(self, query: str) -> dict[str, Any]:
        """model, input_shape (required), warmup, repeats, threads; a ``400`` names the first bad one."""
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
        if "model" in pairs:
            out["model"] = model_id(pairs["model"][0])
        for name, default, low, high in (
            ("warmup", 10, 0, 1000), ("repeats", 50, 1, 10000), ("threads", 1, 1, self.threads_max),
            ("profile", 0, 0, 1),
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

    def measure(self, path: str, input_shape: tuple[int, ...], warmup: int, repeats: int,
                threads: int, profile: int = 0) -> dict[str, Any]:
        """Time the model file ``path`` in the measuring process; the caller holds the slot. A bad
        model or shape is a ``400``; a crash, or a memory or time limit reached, a ``422``."""
        answer = self.measurer.run({
            "model": path, "input_shape": list(input_shape), "warmup": warmup, "repeats": repeats,
            "threads": threads, "timeout_s": self.timeout_s, "profile": bool(profile),
        })
        if answer.get("status") != 200:
            raise HttpError(int(answer.get("status") or 500), str(answer.get("error")))
        return answer["result"]


def model_id(text: str) -> str:
    """A model's sha256 as the agent names it: 64 lower-case hex digits (a ``400`` otherwise)."""
    if not SHA256_RE.match(text):
        raise HttpError(400, f"a model is named by its sha256 (64 lower-case hex digits), not {text[:80]!r}")
    return text


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- the measuring process ---------------------------------------------------------------------------
def measure_file(
    path: str, input_shape: tuple[int, ...], warmup: int, repeats: int, threads: int, timeout_s: float,
    profile: bool = False,
) -> dict[str, Any]:
    """Load and time the ONNX file ``path`` (in the measuring process); with ``profile``, then time
    each node with onnxruntime's profiler (``repeats`` runs, answered as ``nodes``). A bad model or
    shape is a ``400``."""
    try:
        with open(path, "rb") as f:  # from bytes: external data resolves in the empty working folder
            model = f.read()
        session = ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])
        del model
        inputs = session.get_inputs()
    except Exception as exc:
        raise HttpError(400, f"cannot load model: {ort_reason(exc)}") from None
    if not inputs:
        raise HttpError(400, "cannot measure a model without inputs")
    feed = {inputs[0].name: fixed_input(input_shape)}
    started = time.time()
    try:
        times, truncated = time_runs(session, feed, warmup, repeats, time.perf_counter() + timeout_s)
    except Exception as exc:
        shape = ",".join(map(str, input_shape))
        raise HttpError(400, f"cannot run model on float32 input {shape}: {ort_reason(exc)}") from None
    finished = time.time()
    t = np.asarray(times)
    nodes = {}
    if profile:
        try:
            with open(path, "rb") as f:
                nodes = profile_nodes(f.read(), input_shape, threads, repeats)
        except Exception as exc:
            raise HttpError(400, f"cannot profile model: {ort_reason(exc)}") from None
    return {
        **({"nodes": nodes} if profile else {}),
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


def limit_memory(max_bytes: int | None) -> None:
    """Cap this process's address space (``RLIMIT_AS``) where the platform has one."""
    if max_bytes is None:
        return
    try:
        import resource
    except ImportError:  # not a Unix: no limit
        return
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))


def child_main() -> int:
    """The measuring process: its memory limit as the first JSON line on stdin (answered ``ready``),
    then one job per line, each answered by one line (``status`` 200 and ``result``, or the error's
    ``status`` and one-line ``error``), until stdin closes."""
    memory = json.loads(sys.stdin.buffer.readline())["max_memory_bytes"]
    limit_memory(memory)
    _answer({"ready": True})
    for line in sys.stdin.buffer:
        job = json.loads(line)
        try:
            result = measure_file(
                job["model"], tuple(job["input_shape"]), job["warmup"], job["repeats"], job["threads"],
                job["timeout_s"], job.get("profile", False),
            )
            answer: dict[str, Any] = {"status": 200, "result": result}
        except HttpError as exc:
            answer = {"status": exc.status, "error": exc.message}
            if memory is not None and re.search(r"alloc", exc.message, re.IGNORECASE):  # over the limit
                answer = {"status": 422, "error": one_line(
                    f"out of memory under the {memory / MB:g} MB limit (--max-memory-mb): {exc.message}")}
        except MemoryError:
            answer = {"status": 422, "error": f"out of memory: the model needs more than the "
                      f"{(memory or 0) / MB:g} MB limit (--max-memory-mb)"}
        _answer(answer)
    return 0


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


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
            route = "/v1/models/{sha256}" if path.startswith(MODELS_PREFIX) else path
            if route not in ROUTES:
                raise HttpError(404, f"no such endpoint {path}; known: {', '.join(ROUTES)}")
            allowed = ", ".join(ROUTES[route])
            if method not in ROUTES[route]:
                raise HttpError(405, f"{path} takes {allowed}, not {method}", {"Allow": allowed})
            if path == "/healthz":
                self._send_json(200, {"ok": True})
                return
            if not self.agent.authorized(self.headers.get("Authorization")):
                raise HttpError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            if path == "/v1/info":
                self._send_json(200, self.agent.info())
            elif route == "/v1/measure":
                self._measure()
            elif method == "GET":
                self._model_info(model_id(path[len(MODELS_PREFIX):]))
            else:
                self._model_upload(model_id(path[len(MODELS_PREFIX):]))
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

    def _body_length(self) -> int:
        """The announced length of an ONNX body: required, positive and within ``--max-model-mb``
        (413 before anything is read)."""
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise HttpError(411, "Content-Length is required (send the ONNX file as the body)")
        try:
            length = int(length_text)
        except ValueError:
            raise HttpError(400, f"bad Content-Length {length_text!r}") from None
        if length < 0:
            raise HttpError(400, f"bad Content-Length {length_text!r}")
        if length > self.agent.max_model_bytes:
            self.close_connection = True
            raise HttpError(
                413, f"model is {length} bytes, over the agent's limit of {self.agent.max_model_bytes} bytes "
                "(--max-model-mb)"
            )
        if length == 0:
            raise HttpError(400, "empty body: send the ONNX file")
        return length

    def _model_info(self, sha: str) -> None:
        size = self.agent.cache.size(sha)
        if size is None:
            raise HttpError(404, f"model {sha} is not held here: PUT it to {MODELS_PREFIX}{sha}")
        self._send_json(200, {"sha256": sha, "bytes": size})

    def _model_upload(self, sha: str) -> None:
        length = self._body_length()
        self.agent.slot.admit()  # a body in memory counts against --max-queue, as a measurement's does
        try:
            self.agent.cache.add(self._read_body(length), sha)
        finally:
            self.agent.slot.leave()
        self._send_json(201, {"sha256": sha, "bytes": length})

    def _measure(self) -> None:
        agent = self.agent
        params = agent.parse_query(urlsplit(self.path).query)
        sha = params.pop("model", None)
        if sha is None:
            length = self._body_length()
        elif self._content_length_or_zero():
            raise HttpError(400, "send model=SHA256 (a model held here) or the ONNX body, not both")
        agent.slot.admit()
        try:
            if sha is None:
                sha = agent.cache.add(self._read_body(length))
            with agent.cache.pinned(sha) as path:
                queued = time.perf_counter()
                agent.slot.acquire(agent.timeout_s)
                try:
                    start = time.perf_counter()
                    result = agent.measure(path, **params)
                    result["measure_s"] = time.perf_counter() - start
                finally:
                    agent.slot.release()
            result["queued_s"] = start - queued
            result["sha256"] = sha
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
    #: HTTPS when set (``--tls-cert``/``--tls-key``): each connection's handshake runs in its own thread.
    tls: ssl.SSLContext | None = None

    agent: Agent | None = None  # set on the subclass that ``serve`` builds

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            return super().finish_request(request, client_address)
        request.settimeout(HANDSHAKE_S)
        with self.tls.wrap_socket(request, server_side=True) as connection:
            self.RequestHandlerClass(connection, client_address, self)

    def server_close(self) -> None:
        """Stop listening, kill a measurement still running, remove the model cache."""
        super().server_close()
        if self.agent is not None:
            self.agent.measurer.stop()
            shutil.rmtree(self.agent.cache.folder, ignore_errors=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        sys.stderr.write(f"{client_address[0]} connection error: {type(exc).__name__}: {tls_reason(exc)}\n")


def tls_reason(exc: BaseException | None) -> str:
    """An ``ssl`` error on one line: the verification message or reason, without the C source place."""
    if getattr(exc, "verify_message", None):
        return one_line(exc.verify_message)  # type: ignore[union-attr]
    text = exc.args[1] if isinstance(exc, ssl.SSLError) and len(exc.args) > 1 else exc
    return one_line(re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(text)))


def server_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The TLS context of ``--tls-cert`` and ``--tls-key`` (both or neither); a ``UsageError`` naming
    what is wrong with them."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise UsageError("--tls-cert and --tls-key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(os.path.expanduser(cert), os.path.expanduser(key))
    except FileNotFoundError as exc:
        raise UsageError(f"cannot read {exc.filename or cert + ' or ' + key}: {exc.strerror}") from None
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its key ({tls_reason(exc)})"
        ) from None
    return context


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
    parser.add_argument(
        "--max-memory-mb", type=float, default=None,
        help="address space of the process that measures one model (default: the machine's memory)",
    )
    parser.add_argument(
        "--max-measure-s", type=float, default=None,
        help=f"a measurement (load, warm-up, timed runs) still going after this is killed "
        f"(default: --timeout-s + {LOAD_ALLOWANCE_S:g})",
    )
    parser.add_argument("--cache-models", type=int, default=64, help="models kept by sha256 (default 64)")
    parser.add_argument("--cache-mb", type=float, default=None,
                        help="bytes of models kept (default: 512 or 4 x --max-model-mb, the larger)")
    parser.add_argument("--cache-dir", default=None,
                        help="where the kept models go, in a folder removed at exit (default: the temp dir)")
    parser.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS (with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
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


def physical_memory() -> int | None:
    """This machine's memory in bytes, where the platform says."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def serve(args: argparse.Namespace, token: str) -> Server:
    """Bind the server (not yet serving); ``server_close`` removes its model cache."""
    tls = server_tls(getattr(args, "tls_cert", None), getattr(args, "tls_key", None))
    max_model = int(args.max_model_mb * MB)
    cache_bytes = int(args.cache_mb * MB) if args.cache_mb is not None else max(512 * MB, 4 * max_model)
    if cache_bytes < max_model:
        raise UsageError("--cache-mb must be at least --max-model-mb")
    memory = int(args.max_memory_mb * MB) if args.max_memory_mb is not None else physical_memory()
    try:
        where = os.path.expanduser(args.cache_dir) if args.cache_dir else None
        folder = tempfile.mkdtemp(prefix="edgepareto-agent-", dir=where)
    except OSError as exc:
        raise UsageError(f"cannot use --cache-dir {args.cache_dir}: {exc.strerror or exc}") from None
    agent = Agent(
        token, max_model, args.max_queue, args.timeout_s, args.threads_max or os.cpu_count() or 1,
        ModelCache(folder, args.cache_models, cache_bytes), memory, args.max_measure_s,
    )
    handler = type("AgentHandler", (Handler,), {"agent": agent})
    base = type("Server6", (Server,), {"address_family": socket.AF_INET6}) if ":" in args.host else Server
    server_class = type("AgentServer", (base,), {"tls": tls, "agent": agent})
    try:
        return server_class((args.host, args.port), handler)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
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
            (args.max_memory_mb is None or args.max_memory_mb >= 256, "--max-memory-mb must be at least 256"),
            (args.max_measure_s is None or args.max_measure_s > 0, "--max-measure-s must be positive"),
            (args.cache_models >= 1, "--cache-models must be at least 1"),
            (args.cache_mb is None or args.cache_mb > 0, "--cache-mb must be positive"),
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
    scheme = "https" if server.tls is not None else "http"
    print(f"edgepareto agent listening on {scheme}://{shown}:{port}", flush=True)
    if server.tls is None and host not in ("127.0.0.1", "::1", "localhost"):
        print("edgepareto agent: warning: plain HTTP beyond this machine: the token and models travel "
              "unencrypted; use --tls-cert/--tls-key, a trusted network or a tunnel",
              file=sys.stderr, flush=True)
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
