"""The HTTP face of the service (FastAPI): submit, watch, cancel and fetch searches.

Security: every ``/v1`` route needs ``Authorization: Bearer TOKEN`` (401 without, 403 when wrong); a job
id is looked up in the jobs table before any file is touched, so ids and trial numbers never become
paths of their own; data, checkpoint, teacher and space paths in a request must lie under the data root;
an agent a request names (``agent``, ``target: remote:URL``) must be on ``serve --allow-agent`` and
``ray_address`` is the server's, so a request never chooses where the workers connect; request bodies
are capped (413); validation errors are 422 naming the field. ``serve --tls-cert/--tls-key``: HTTPS.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from search.core.text import one_line
from search.service.routes import Service, router
from search.service.scheduler import Scheduler
from search.service.schemas import Settings
from search.service.store import JobStore


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413, whether its size is
    declared (Content-Length) or not (chunked: the body is read here first, up to the limit)."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                return await _too_large(send, self.limit)
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay(message, receive), send)  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await _too_large(send, self.limit)
        whole = {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, _replay(whole, receive), send)


def _replay(first: dict, receive: Callable) -> Callable[[], Awaitable[dict]]:
    """``first`` (the buffered body), then the connection's own messages (a disconnect, later)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return first

    return replay


async def _too_large(send: Callable, limit: int) -> None:
    await _answer(send, 413, f"request body over {limit} bytes")


async def _answer(send: Callable, status: int, detail: str, extra: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """ASGI middleware: ``/v1`` requests need the token, checked before anything reads the body
    (401 without one, 403 when wrong)."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, credentials = header.partition(b" ")
            if scheme.lower() != b"bearer" or not credentials.strip():
                challenge = [(b"www-authenticate", b"Bearer")]
                return await _answer(send, 401, "a bearer token is required", challenge)
            if not secrets.compare_digest(credentials.strip(), self.token):
                return await _answer(send, 403, "wrong token")
        await self.app(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    """The service: ``settings`` say where runs and jobs live; the scheduler starts with the app."""
    store = JobStore(settings.db_url)
    scheduler = Scheduler(store, settings.runs_dir, settings.max_running)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(
        title="edgepareto", version="1", lifespan=lifespan,
        description="Compression searches for vision models: submit, watch, cancel, select, download.",
    )
    app.state.scheduler = scheduler
    app.state.service = Service(settings, store, scheduler)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _jobs_database_unavailable)
    app.router.redirect_slashes = False  # a trailing slash is a 404, not a redirect to another path
    app.include_router(router)
    return BearerAuth(BodyLimit(app, settings.max_body_bytes), settings.token)  # type: ignore[return-value]


async def _jobs_database_unavailable(_request: Any, exc: Exception) -> JSONResponse:
    """503 with Retry-After when the jobs database refuses a request (read-only, locked, unreachable):
    nothing was changed, and the same request may be sent again. The driver's message only, no SQL."""
    reason = one_line(getattr(exc, "orig", None) or exc, 200)
    return JSONResponse(status_code=503, headers={"Retry-After": "5"},
                        content={"detail": f"the jobs database is unavailable ({reason}); retry later"})


async def _validation_error(_request: Any, exc: Exception) -> JSONResponse:
    """422 naming each field and what is wrong with it; the offending input is not echoed back (it
    may be large, or a NaN that JSON cannot carry)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in errors]
    return JSONResponse(status_code=422, content={"detail": detail})
