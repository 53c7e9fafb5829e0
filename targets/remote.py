"""``remote:http://HOST:PORT``: latency measured on a device by ``edgepareto agent`` over HTTP.

The client side, run where the search runs: it sends each ONNX file to the agent's
``POST /v1/measure`` with the bearer token from ``EDGEPARETO_AGENT_TOKEN`` (or the file named by
``EDGEPARETO_AGENT_TOKEN_FILE``). A candidate the agent rejects is a ``CandidateError`` (a FAIL
trial); a wrong token or an unreachable agent is a ``UserError`` (the run cannot go on).
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from search.core.errors import CandidateError, UserError
from search.core.text import one_line
from targets.agent import UsageError, check_token
from targets.agent import read_token as read_agent_token
from targets.base import TARGETS, Latency, Target

TOKEN_ENV = "EDGEPARETO_AGENT_TOKEN"
TOKEN_FILE_ENV = "EDGEPARETO_AGENT_TOKEN_FILE"
#: How long ``describe`` and ``check`` wait for ``/v1/info``.
INFO_TIMEOUT_S = 10.0
#: Pause between retries while the agent answers 503 (busy).
BUSY_RETRY_S = 1.0
#: Talk to the agent directly: a proxy from the environment must not see the token.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def parse_url(url: str | None) -> str:
    """``http(s)://host:port`` with nothing after it but an optional ``/``; a ``UserError`` otherwise."""
    example = "use remote:http://HOST:PORT, e.g. --target remote:http://192.168.1.20:8765"
    if not url:
        raise UserError(f"target remote needs the agent's URL: {example}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise UserError(f"bad agent URL {url!r}: {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None \
            or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise UserError(f"bad agent URL {url!r}: {example}")
    return f"{parts.scheme}://{parts.netloc}"


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
        token: str | None = None, timeout_s: float = 300,
    ) -> None:
        self.url = parse_url(url)
        self.name = f"remote:{self.url}"
        self.threads = threads
        self.repeats = repeats
        self.warmup = warmup
        self.timeout_s = timeout_s
        self.token = token.strip() if token else read_token()
        self._info: dict[str, Any] | None = None

    # -- HTTP --------------------------------------------------------------------------------
    def _request(
        self, path: str, data: bytes | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """One request; ``urllib`` errors are raised as they come."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(
            self.url + path, data=data, headers=headers, method="POST" if data is not None else "GET"
        )
        with _OPENER.open(request, timeout=timeout or self.timeout_s) as response:
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
        return UserError(
            f"agent {self.url} is not reachable: {one_line(reason)} (is edgepareto agent running there?)"
        )

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
        info = self._info if self._info is not None else self.check()
        data = Path(onnx_path).read_bytes()
        limit = info.get("max_model_bytes")
        if isinstance(limit, int) and len(data) > limit:
            raise CandidateError(
                f"agent {self.url}: model is {len(data)} bytes, over the agent's limit of {limit} bytes"
            )
        query = urllib.parse.urlencode({
            "input_shape": ",".join(str(int(d)) for d in input_shape),
            "warmup": self.warmup, "repeats": self.repeats, "threads": self.threads,
        })
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                answer = self._request(f"/v1/measure?{query}", data=data)
                break
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise self._unusable(exc) from None
                if exc.code == 503 and time.monotonic() + BUSY_RETRY_S < deadline:
                    time.sleep(BUSY_RETRY_S)  # another client is measuring; wait our turn
                    continue
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
