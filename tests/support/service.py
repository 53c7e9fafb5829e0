"""A real ``edgepareto serve`` in a subprocess, for the service tests (HTTP on loopback).

``Server(root)`` owns ``root``: a token file, ``root/runs`` (runs dir, and the default jobs database
``runs/service.db``) and uses ``root`` as the data root and working directory. ``start()`` launches
``python -m search serve`` in its own process group on a free port and waits for ``GET /healthz``;
``stop()`` asks it to stop (SIGTERM) and then SIGKILLs the group and every process it started;
``kill()`` SIGKILLs them at once (a crash); ``start()`` again restarts on the same runs dir and database.
Use it as a context manager. Process helpers read ``/proc`` (Linux), so no psutil is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT = 60.0
TERMINAL = ("done", "failed", "cancelled")
STATES = ("queued", "running", *TERMINAL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(token: str | None = None) -> dict[str, str]:
    """The environment for a server: ours, without an inherited token, warnings off."""
    env = {k: v for k, v in os.environ.items() if k != "EDGEPARETO_TOKEN"}
    env["PYTHONWARNINGS"] = "ignore"
    if token is not None:
        env["EDGEPARETO_TOKEN"] = token
    return env


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "search", "serve", *args]


def get(url: str, **kwargs: Any) -> httpx.Response:
    """``httpx.get`` straight to the server (no proxy from the environment)."""
    return httpx.get(url, trust_env=False, **{"timeout": 30, **kwargs})


def strict_json(response: httpx.Response) -> Any:
    """The response body as JSON, refusing NaN and Infinity (not JSON; Python's json accepts them)."""

    def reject(name: str) -> None:
        raise ValueError(f"{response.request.method} {response.request.url}: body holds {name}, not JSON")

    return json.loads(response.text, parse_constant=reject)


# ---------------------------------------------------------------- processes (via /proc)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for p in _pids():
        stat = _stat(p)
        if stat is not None and stat[0] not in ("Z", "X"):
            children.setdefault(stat[1], []).append(p)
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def processes_mentioning(text: str, exclude: Iterable[int] = ()) -> list[tuple[int, str]]:
    """Live processes (other than ours and ``exclude``) whose command line contains ``text``."""
    skip = {os.getpid(), *exclude}
    return [(p, cmdline(p)) for p in _pids() if p not in skip and alive(p) and text in cmdline(p)]


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until none of ``pids`` is alive; returns those still alive at the timeout."""
    pids = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if alive(p)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _sigkill(pids: Iterable[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


# ---------------------------------------------------------------- the server


class Server:
    """One ``edgepareto serve`` over ``root``; restartable on the same runs dir and database."""

    def __init__(
        self, root: Path, *, max_running: int = 1, max_body_bytes: int | None = None,
        extra: Sequence[str] = (), token: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.runs_dir = self.root / "runs"
        self.token = token or secrets.token_hex(16)
        self.token_file = self.root / "token.txt"
        self.token_file.write_text(self.token + "\n")
        self.max_running = max_running
        self.max_body_bytes = max_body_bytes
        self.extra = list(extra)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "server.log"
        self.known: set[int] = set()  # every process seen below the server, for the final clean-up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def command(self) -> list[str]:
        args = [
            "--host", "127.0.0.1", "--port", str(self.port), "--runs-dir", str(self.runs_dir),
            "--data-root", str(self.root), "--max-running", str(self.max_running),
            "--token-file", str(self.token_file),
        ]
        if self.max_body_bytes is not None:
            args += ["--max-body-bytes", str(self.max_body_bytes)]
        return serve_command(*args, *self.extra)

    def start(self, timeout: float = START_TIMEOUT) -> Server:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.port = free_port()
        with self.log.open("a") as log:
            log.write(f"\n==== start {' '.join(self.command())}\n")
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), cwd=self.root, env=server_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"no answer on {self.url}/healthz in {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no server log: {e})"

    def children(self) -> set[int]:
        """The live processes the server started (its job workers); remembered for clean-up."""
        if self.proc is None or self.proc.poll() is not None:
            return set()
        found = descendants(self.proc.pid)
        self.known |= found
        return found

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM the server, then SIGKILL its group and whatever it started; returns its exit code."""
        if self.proc is None:
            return None
        self.children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        code = self.proc.poll()
        self._kill_all()
        return code

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the server, its process group and every process it started."""
        if self.proc is None:
            return
        self.children()
        self._kill_all()

    def _kill_all(self) -> None:
        assert self.proc is not None
        pids = set(self.known)
        if self.proc.poll() is None:
            pids |= descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        _sigkill(pids)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        wait_gone(pids, 10)
        self.known.clear()

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """An httpx client for this server, authenticated with ``token`` (default: the right one)."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False, **kwargs)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- jobs


def submit(client: httpx.Client, config: dict[str, Any]) -> str:
    r = client.post("/v1/searches", json=config)
    assert r.status_code == 202, f"POST /v1/searches {config}: {r.status_code} {r.text}"
    body = strict_json(r)
    assert body["state"] == "queued", body
    return body["id"]


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/searches/{job_id}")
    assert r.status_code == 200, f"GET /v1/searches/{job_id}: {r.status_code} {r.text}"
    return strict_json(r)


def wait_state(
    client: httpx.Client, job_id: str, states: Sequence[str], timeout: float, server: Server | None = None,
    poll: float = 0.5,
) -> dict[str, Any]:
    """Poll the job until its state is one of ``states``; fails early when it ends otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        body = job(client, job_id)
        if server is not None:
            server.children()
        if body["state"] in states:
            return body
        if body["state"] in TERMINAL:
            raise AssertionError(
                f"job {job_id} ended {body['state']!r} (error: {body.get('error')!r}), "
                f"waited for {states}:\n{json.dumps(body, indent=1)[:3000]}"
            )
        if time.monotonic() > deadline:
            tail = f"\nserver log:\n{server.tail()}" if server else ""
            raise AssertionError(f"job {job_id} still {body['state']!r} after {timeout:.0f} s{tail}")
        time.sleep(poll)
