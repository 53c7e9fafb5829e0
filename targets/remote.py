"""``remote:http(s)://HOST:PORT``: latency measured on a device by ``edgepareto agent`` over HTTP(S).

The client side, run where the search runs: it asks the agent to measure each ONNX file by its
sha256 (``POST /v1/measure?model=SHA256``) and uploads the file (``PUT /v1/models/SHA256``) only when
the agent does not hold it, with the bearer token from ``EDGEPARETO_AGENT_TOKEN`` (or the file named
by ``EDGEPARETO_AGENT_TOKEN_FILE``). An ``https`` agent's certificate is verified, against the system's
CAs or ``ca_file`` (``--ca-file``). A candidate the agent rejects is a ``CandidateError`` (a FAIL
trial); a wrong token, an untrusted certificate or an unreachable agent is a ``UserError`` (the run
cannot go on).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from search.core.errors import CandidateError, UserError
from search.core.text import one_line
from search.core.urls import agent_url
from targets.agent import UsageError, check_token, tls_reason
from targets.agent import read_token as read_agent_token
from targets.base import TARGETS, Latency, Target

TOKEN_ENV = "EDGEPARETO_AGENT_TOKEN"
TOKEN_FILE_ENV = "EDGEPARETO_AGENT_TOKEN_FILE"
#: How long ``describe`` and ``check`` wait for ``/v1/info``.
INFO_TIMEOUT_S = 10.0
#: Pause between retries while the agent answers 503 (busy).
BUSY_RETRY_S = 1.0


def parse_url(url: str | None) -> str:
    """``http(s)://host:port`` with nothing after it but an optional ``/``; a ``UserError`` otherwise."""
    return agent_url(url)


def client_tls(ca_file: str | None) -> ssl.SSLContext:
    """Certificate and host name verified, against the system's CAs or the PEM file ``ca_file``; a
    file that is missing or holds no certificate is a ``UserError`` naming it."""
    try:
        return ssl.create_default_context(cafile=os.path.expanduser(ca_file) if ca_file else None)
    except FileNotFoundError:
        raise UserError(f"--ca-file {ca_file}: no such file", field="ca_file") from None
    except (OSError, ssl.SSLError) as exc:
        reason = tls_reason(exc) if isinstance(exc, ssl.SSLError) else exc.strerror or one_line(exc)
        raise UserError(f"--ca-file {ca_file}: not a PEM certificate ({reason})", field="ca_file") from None


class _NotHeld(Exception):
    """The agent does not hold the model asked for by hash (404): upload it."""


def read_token() -> str:
    """The token from ``EDGEPARETO_AGENT_TOKEN``, else from the file ``EDGEPARETO_AGENT_TOKEN_FILE`` names,
    by the agent's own rule (``targets.agent.check_token``)."""
    token = os.environ.get(TOKEN_ENV, "")
    path = os.environ.get(TOKEN_FILE_ENV, "").strip()
    try:
        if token.strip():
            return check_token(token, f"${TOKEN_ENV}")
        if path:
            return read_agent_token(path)
    except UsageError as exc:
        raise UserError(str(exc)) from None
    raise UserError(
        f"the remote target needs the agent's token: set {TOKEN_ENV} or {TOKEN_FILE_ENV} "
        "(the file given to edgepareto agent --token-file)"
    )


@TARGETS.register("remote")
class RemoteTarget(Target):
    """A device running ``edgepareto agent``: measured there, batch-1, float32 input."""

    def __init__(
        self, url: str | None = None, threads: int = 1, repeats: int = 50, warmup: int = 10,
        token: str | None = None, timeout_s: float = 300, ca_file: str | None = None,
    ) -> None:
        self.url = parse_url(url)
        self.name = f"remote:{self.url}"
        self.threads = threads
        self.repeats = repeats
        self.warmup = warmup
        self.timeout_s = timeout_s
        self.ca_file = ca_file
        if ca_file and not self.url.startswith("https://"):
            raise UserError(f"--ca-file verifies an https agent; {self.url} is plain http", field="ca_file")
        handlers: list[Any] = [urllib.request.ProxyHandler({})]  # a proxy must not see the token
        if self.url.startswith("https://"):
            handlers.append(urllib.request.HTTPSHandler(context=client_tls(ca_file)))
        self._opener = urllib.request.build_opener(*handlers)
        self.token = token.strip() if token else read_token()
        self._info: dict[str, Any] | None = None

    # -- HTTP --------------------------------------------------------------------------------
    def _request(
        self, path: str, data: bytes | None = None, timeout: float | None = None, method: str | None = None,
    ) -> dict[str, Any]:
        """One request; ``urllib`` errors are raised as they come."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        method = method or ("POST" if data is not None else "GET")
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with self._opener.open(request, timeout=timeout or self.timeout_s) as response:
            body = response.read()
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise CandidateError(f"agent {self.url} sent an answer that is not a JSON object")
        return answer

    def _unusable(self, exc: BaseException) -> UserError:
        """A ``UserError`` for an agent that cannot be reached or refuses the token."""
        if isinstance(exc, urllib.error.HTTPError) and exc.code in (401, 403):
            return UserError(
                f"agent {self.url} refused the token ({exc.code} {_message(exc)}); set {TOKEN_ENV} or "
                f"{TOKEN_FILE_ENV} to the agent's --token-file contents"
            )
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ssl.SSLCertVerificationError):
            where = f"the CA in --ca-file {self.ca_file}" if self.ca_file else "the system's CAs"
            return UserError(
                f"agent {self.url}: its TLS certificate is not trusted ({tls_reason(reason)}) by {where}; "
                "pass --ca-file with the certificate it serves (or the CA that signed it)"
            )
        if isinstance(reason, ssl.SSLError):
            return UserError(
                f"agent {self.url}: TLS failed ({tls_reason(reason)}); does it serve https "
                "(edgepareto agent --tls-cert/--tls-key)?"
            )
        hint = "is edgepareto agent running there?"
        if isinstance(reason, (http.client.RemoteDisconnected, ConnectionResetError)) \
                and self.url.startswith("http://"):
            hint += " Does it serve https?"
        return UserError(f"agent {self.url} is not reachable: {one_line(reason)} ({hint})")

    def check(self) -> dict[str, Any]:
        """``GET /v1/info``: the agent's versions and limits; a ``UserError`` if unusable."""
        try:
            info = self._request("/v1/info", timeout=INFO_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise self._unusable(exc) from None
            raise UserError(f"agent {self.url}: /v1/info answered {exc.code} {_message(exc)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise self._unusable(exc) from None
        except CandidateError as exc:
            raise UserError(f"{exc}; is {self.url} an edgepareto agent?") from None
        threads_max = info.get("threads_max")
        if isinstance(threads_max, int) and self.threads > threads_max:
            raise UserError(f"agent {self.url} allows at most {threads_max} thread(s), not {self.threads}")
        self._info = info
        return info

    # -- Target ------------------------------------------------------------------------------
    def latency(self, onnx_path: Path, input_shape: tuple[int, ...]) -> Latency:
        answer = self._measure(onnx_path, input_shape)
        try:
            median, p90 = float(answer["median_ms"]), float(answer["p90_ms"])
            repeats = int(answer["repeats"])
        except (KeyError, TypeError, ValueError):
            raise CandidateError(f"agent {self.url}: the answer lacks median_ms, p90_ms or repeats") from None
        return Latency(
            median_ms=median, p90_ms=p90, repeats=repeats, threads=self.threads,
            source="measured:remote", target=self.name,
            min_ms=float(answer["min_ms"]) if "min_ms" in answer else None,
        )

    def _measure(
        self, onnx_path: Path, input_shape: tuple[int, ...], profile: bool = False,
    ) -> dict[str, Any]:
        """The agent's answer for one file, uploaded only when the agent does not hold it."""
        info = self._info if self._info is not None else self.check()
        data = Path(onnx_path).read_bytes()
        limit = info.get("max_model_bytes")
        if isinstance(limit, int) and len(data) > limit:
            raise CandidateError(
                f"agent {self.url}: model is {len(data)} bytes, over the agent's limit of {limit} bytes"
            )
        sha = hashlib.sha256(data).hexdigest()
        measure = "/v1/measure?" + urllib.parse.urlencode({
            "model": sha, "input_shape": ",".join(str(int(d)) for d in input_shape),
            "warmup": self.warmup, "repeats": self.repeats, "threads": self.threads,
            **({"profile": 1} if profile else {}),
        })
        deadline = time.monotonic() + self.timeout_s
        try:  # asked by hash first: a file the agent already holds is not sent again
            answer = self._exchange(measure, b"", deadline, not_held=True)
        except _NotHeld:
            self._exchange(f"/v1/models/{sha}", data, deadline, method="PUT")
            try:
                answer = self._exchange(measure, b"", deadline, not_held=True)
            except _NotHeld:
                raise CandidateError(
                    f"agent {self.url}: model {sha[:12]} was dropped from its cache right after the upload "
                    "(its --cache-models or --cache-mb is too small for the clients it serves)"
                ) from None
        return answer

    def node_times(self, onnx_path: Path, input_shape: tuple[int, ...]) -> dict[str, tuple[str, float]]:
        nodes = self._measure(onnx_path, input_shape, profile=True).get("nodes")
        if not isinstance(nodes, dict):
            raise UserError(f"agent {self.url} does not time single kernels; update it to this version")
        return {str(k): (str(v[0]), float(v[1])) for k, v in nodes.items()}

    def disabled_optimizers(self) -> tuple[str, ...]:
        from targets.kernels import X86_ONLY_OPTIMIZERS  # SciPy and the graph code: not at start-up

        info = self._info if self._info is not None else self.check()
        machine = str(info.get("machine", "")).lower()
        return () if machine in ("x86_64", "amd64", "i686", "x86") else X86_ONLY_OPTIMIZERS

    def _exchange(
        self, path: str, data: bytes, deadline: float, method: str = "POST", not_held: bool = False,
    ) -> dict[str, Any]:
        """One request of a measurement, tried again while the agent is busy (503) until ``deadline``;
        a rejected candidate is a ``CandidateError``, a 404 with ``not_held`` is ``_NotHeld``."""
        while True:
            try:
                return self._request(path, data=data, method=method)
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise self._unusable(exc) from None
                if exc.code == 503 and time.monotonic() + BUSY_RETRY_S < deadline:
                    time.sleep(BUSY_RETRY_S)  # another client is measuring; wait our turn
                    continue
                if exc.code == 404 and not_held:
                    raise _NotHeld() from None
                raise CandidateError(f"agent {self.url}: {exc.code} {_message(exc)}") from None
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (ConnectionResetError, BrokenPipeError)):  # cut off mid-upload
                    reason = one_line(exc.reason)
                    raise CandidateError(f"agent {self.url}: connection failed: {reason}") from None
                raise self._unusable(exc) from None
            except TimeoutError:
                raise CandidateError(f"agent {self.url}: no answer within {self.timeout_s:g} s") from None
            except (OSError, http.client.HTTPException) as exc:  # reset mid-request: died on this model?
                raise CandidateError(f"agent {self.url}: connection failed: {one_line(exc)}") from None

    def describe(self) -> str:
        settings = f"{self.threads} thread(s), measured by the agent"
        try:
            info = self._info if self._info is not None else self.check()
        except UserError as exc:
            return f"{self.name}: not reachable now ({exc}); {settings}"
        machine = " ".join(str(info.get(k) or "") for k in ("system", "machine", "processor")).split()
        return (
            f"{self.name}: {' '.join(dict.fromkeys(machine)) or 'unknown machine'}, "
            f"onnxruntime {info.get('onnxruntime', '?')} CPU, {settings}"
        )


def _message(exc: urllib.error.HTTPError) -> str:
    """The agent's ``error`` message from an error answer, else the HTTP reason."""
    try:
        body = json.loads(exc.read() or b"null")
    except (ValueError, OSError):
        body = None
    if isinstance(body, dict) and body.get("error"):
        return one_line(body["error"])
    return one_line(exc.reason)
