"""The HTTP face of the service (FastAPI): submit, watch, cancel and fetch searches.

Security: every ``/v1`` route needs ``Authorization: Bearer TOKEN`` (401 without, 403 when wrong); a job
id is looked up in the jobs table before any file is touched, so ids and trial numbers never become
paths of their own; data, checkpoint, teacher and space paths in a request must lie under the data root;
request bodies are capped (413); validation errors are 422 naming the field.
"""

from __future__ import annotations

import json
import secrets
import types
import typing
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from fastapi import Depends, FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, confloat, create_model

from search.config.objectives import OBJECTIVES
from search.config.run_config import RunConfig
from search.core.cells import plain_record
from search.core.errors import UserError
from search.core.layout import MODEL_FILE, TRIALS_DIR, trial_dir
from search.core.paths import CHECKPOINT_SUFFIXES, SPACE_SUFFIXES, is_file_reference
from search.service.scheduler import Progress, Scheduler, describe, read_progress, trials_of
from search.service.store import FINAL, Job, JobStore

#: Settings the server decides, never a request: where runs go and which database holds their study.
SERVER_FIELDS = ("name", "runs_dir", "storage")
#: Settings that may name files; they must lie under the data root (other values are names).
PATH_FIELDS = ("data", "checkpoint", "teacher", "space")
#: Settings whose values are files or names by ``core.paths.is_file_reference`` (names pass unchanged,
#: and the worker reads them as names, never as files); for the others only these values are names.
NAMED_BY_RULE = {"teacher": CHECKPOINT_SUFFIXES, "space": SPACE_SUFFIXES}
NOT_PATHS = {"data": ("digits",)}


@dataclass(frozen=True)
class Settings:
    """How ``edgepareto serve`` was started."""

    token: str
    runs_dir: Path
    data_root: Path
    db_url: str
    max_running: int = 1
    max_body_bytes: int = 65536
    ray_address: str | None = None


#: A JSON number that is finite (Python's JSON reader takes NaN and Infinity; no setting means those).
FiniteFloat = confloat(strict=True, allow_inf_nan=False)


def _pydantic_type(hint: Any) -> Any:
    """A RunConfig field type for request bodies: strict, JSON lists for tuples."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, typing.Union) else (hint,)
    mapped = []
    for option in options:
        if option is type(None):
            mapped.append(type(None))
        elif option is bool:
            mapped.append(StrictBool)
        elif option is int:
            mapped.append(StrictInt)
        elif option is float:
            mapped.extend([StrictInt, FiniteFloat])
        elif option is str:
            mapped.append(StrictStr)
        else:  # tuple[str, ...]
            mapped.append(list[StrictStr])
    return typing.Union[tuple(mapped)] if len(mapped) > 1 else mapped[0]  # noqa: UP007


def _search_request() -> type[BaseModel]:
    """The request body of ``POST /v1/searches``: RunConfig's keys (as in run.yaml), the server's own
    settings left out; unknown keys are refused."""
    hints = typing.get_type_hints(RunConfig)
    defaults = RunConfig()
    spec = {}
    for f in fields(RunConfig):
        if f.name in SERVER_FIELDS:
            continue
        default = getattr(defaults, f.name)
        default = list(default) if isinstance(default, tuple) else default
        spec[f.name] = (_pydantic_type(hints[f.name]), Field(default=default))
    return create_model("SearchRequest", __config__=ConfigDict(extra="forbid"), **spec)


SearchRequest = _search_request()


class SelectRequest(BaseModel):
    """A budget: the same options as ``edgepareto select``."""

    model_config = ConfigDict(extra="forbid")
    max_latency_ms: FiniteFloat | StrictInt | None = Field(default=None, gt=0)  # type: ignore[valid-type]
    max_size_mb: FiniteFloat | StrictInt | None = Field(default=None, gt=0)  # type: ignore[valid-type]
    min_accuracy: FiniteFloat | StrictInt | None = Field(default=None, ge=0, le=1)  # type: ignore[valid-type]
    prefer: Literal[tuple(OBJECTIVES)] = "accuracy"  # type: ignore[valid-type]


class Problem(BaseModel):
    """An error answer."""

    detail: str


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (auth and body limit on every /v1)."""
    text = {401: "no bearer token", 403: "wrong token", 404: "no such search or model",
            409: "the search is not in a state that allows this", 413: "request body too large"}
    return {code: {"model": Problem, "description": text[code]} for code in (401, 403, 413, *codes)}


class Submitted(BaseModel):
    id: str
    state: str


def _invalid(field: str | None, message: str) -> RequestValidationError:
    loc = ("body", field) if field else ("body",)
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error", "input": None}])


def _under(root: Path, value: str) -> Path | None:
    """``value`` resolved against ``root``; None when it lies outside or is no path at all."""
    try:
        path = (root / value).resolve()
    except (ValueError, OSError):  # a NUL byte, a loop of links
        return None
    return path if path.is_relative_to(root) else None


def checked_config(body: BaseModel, settings: Settings) -> dict[str, Any]:
    """The submitted settings as a run config: paths confined to the data root and made absolute,
    the server's Ray cluster filled in, then RunConfig's own checks (422 naming the problem)."""
    config = body.model_dump(exclude_unset=True)
    for key in PATH_FIELDS:
        value = config.get(key)
        if not isinstance(value, str) or value in NOT_PATHS.get(key, ()):
            continue
        if key in NAMED_BY_RULE and not is_file_reference(value, NAMED_BY_RULE[key]):
            continue  # a model or preset name: the worker never looks it up on disk
        path = _under(settings.data_root, value)
        if path is None:
            raise _invalid(key, f"{key} must be a path under the server's data root")
        config[key] = str(path)
    if settings.ray_address and "backend" not in config:
        config |= {"backend": "ray", "ray_address": settings.ray_address}
    try:
        RunConfig.from_dict(config)
    except UserError as exc:
        raise _invalid(exc.field, str(exc)) from None
    return config


BEARER = HTTPBearer(auto_error=False)


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
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.router.redirect_slashes = False  # a trailing slash is a 404, not a redirect to another path

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> None:  # noqa: B008
        """Puts the bearer scheme in the OpenAPI spec; ``BearerAuth`` has checked the token before any
        body was read, this checks it again (defence in depth)."""
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), settings.token.encode()):
            raise HTTPException(403, "wrong token")

    def job_or_404(search_id: str) -> Job:
        job = store.get(search_id) if len(search_id) <= 32 else None
        if job is None:
            raise HTTPException(404, f"no search {search_id!r}")
        return job

    def progress_of(job: Job) -> Any:
        cached = scheduler.progress.get(job.id)
        if cached is None or (job.state in FINAL and cached.trials_finished == 0):
            cached = read_progress(scheduler.runs_dir, job.id, cached or Progress(trials_of(job.config)))
            scheduler.progress[job.id] = cached
        return cached

    def run_dir(job: Job) -> Path:
        return scheduler.runs_dir / job.id

    def records(frame: pd.DataFrame, job: Job) -> list[dict[str, Any]]:
        """Rows as JSON: server paths replaced by the model's download URL."""
        return [public(row, job) for row in frame.to_dict(orient="records")]

    def public(row: dict[str, Any], job: Job) -> dict[str, Any]:
        out = plain_record({k: v for k, v in row.items() if k not in ("path", "artifact")})
        if "trial" in out and (row.get("path") or isinstance(row.get("artifact"), str)):
            out["model_url"] = f"/v1/searches/{job.id}/models/{out['trial']}"
        return out

    def finished_report(job: Job) -> Any:
        if job.state != "done":
            raise HTTPException(409, f"search {job.id} is {job.state}, not done")
        from search.front.run import load_report

        try:
            return load_report(run_dir(job))
        except UserError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        counts = store.counts()
        return {"status": "ok", "queued": counts["queued"], "running": counts["running"]}

    v1 = [Depends(authorised)]

    @app.post("/v1/searches", status_code=202, dependencies=v1, response_model=Submitted, tags=["searches"],
              responses=_responses())
    def submit(body: SearchRequest) -> Submitted:  # type: ignore[valid-type]
        job = store.add(checked_config(body, settings))
        return Submitted(id=job.id, state=job.state)

    @app.get("/v1/searches", dependencies=v1, tags=["searches"], responses=_responses())
    def list_searches() -> dict[str, Any]:
        return {"searches": [describe(job, progress_of(job)) for job in store.all()]}

    @app.get("/v1/searches/{search_id}", dependencies=v1, tags=["searches"], responses=_responses(404, 409))
    def status(search_id: str) -> dict[str, Any]:
        job = job_or_404(search_id)
        out = describe(job, progress_of(job)) | {"config": job.config, "pareto": None}
        if job.state == "done":
            out["pareto"] = records(finished_report(job).pareto, job)
        return out

    @app.get("/v1/searches/{search_id}/trials", dependencies=v1, tags=["searches"], responses=_responses(404))
    def trials(search_id: str) -> dict[str, Any]:
        job = job_or_404(search_id)
        path = run_dir(job) / "trials.csv"
        if job.state == "done" and path.is_file():
            return {"trials": records(pd.read_csv(path), job)}
        return {"trials": records(live_trials(run_dir(job), job.id), job)}

    @app.get("/v1/searches/{search_id}/models/{trial}", dependencies=v1, tags=["models"],
             response_class=FileResponse, responses=_responses(404))
    def model(search_id: str, trial: int) -> FileResponse:
        job = job_or_404(search_id)
        folder = (run_dir(job) / TRIALS_DIR).resolve()
        path = (trial_dir(run_dir(job), trial) / MODEL_FILE).resolve()
        if trial < 0 or not path.is_relative_to(folder) or not path.is_file():
            raise HTTPException(404, f"search {job.id} has no model for trial {trial}")
        return FileResponse(path, media_type="application/octet-stream",
                            filename=f"{job.id}-trial{trial}.onnx")

    @app.post("/v1/searches/{search_id}/select", dependencies=v1, tags=["models"],
              responses=_responses(404, 409))
    def select(search_id: str, budget: SelectRequest) -> dict[str, Any]:
        job = job_or_404(search_id)
        report = finished_report(job)
        try:
            choice = report.select(
                budget.max_latency_ms, budget.max_size_mb, budget.min_accuracy, budget.prefer
            )
        except UserError as exc:
            raise _invalid(exc.field, str(exc)) from None
        return choice.to_dict() | {"model": public(choice.model, job)}

    @app.delete("/v1/searches/{search_id}", status_code=202, dependencies=v1, tags=["searches"],
                responses=_responses(404, 409))
    def cancel(search_id: str) -> dict[str, Any]:
        job = job_or_404(search_id)
        state = scheduler.cancel(job.id)
        if state is None:
            raise HTTPException(409, f"search {job.id} already ended ({store.get(job.id).state})")
        return {"id": job.id, "state": state, "cancel": True}

    @app.get("/v1/targets", dependencies=v1, tags=["service"], responses=_responses())
    def targets() -> dict[str, Any]:
        return {"targets": target_list()}

    return BearerAuth(BodyLimit(app, settings.max_body_bytes), settings.token)  # type: ignore[return-value]


async def _validation_error(_request: Any, exc: Exception) -> JSONResponse:
    """422 naming each field and what is wrong with it; the offending input is not echoed back (it
    may be large, or a NaN that JSON cannot carry)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in errors]
    return JSONResponse(status_code=422, content={"detail": detail})


def live_trials(run: Path, name: str) -> pd.DataFrame:
    """The trials of a run that has no trials.csv yet, from its study (empty while the worker is still
    creating it)."""
    db = run / "study.db"
    if not db.is_file():
        return pd.DataFrame()
    import optuna

    from search.front.trials import trials_frame

    storage = None
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}", skip_table_creation=True)
        return trials_frame(optuna.load_study(study_name=name, storage=storage))
    except Exception:  # the worker is creating the tables or the study right now
        return pd.DataFrame()
    finally:
        if storage is not None:
            storage.engine.dispose()


def target_list() -> list[dict[str, Any]]:
    from targets.profile import shipped_profiles

    out = [
        {"name": "host", "kind": "measured", "description": "the server's CPU, measured with onnxruntime"},
        {"name": "remote:URL", "kind": "measured",
         "description": "a device running 'edgepareto agent', measured there over HTTP"},
    ]
    for name, profile in shipped_profiles().items():
        out.append({"name": name, "kind": "predicted", "description": profile.description,
                    "cores": profile.cores, "ram_mb": profile.ram_bytes / 1e6})
    return out



