"""The service's routes, one module-level function each, on one ``APIRouter``: importable and callable one
by one (``status(search_id, service)``), with the running service (``Service``: settings, jobs table,
scheduler) injected from the app's state."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from search.core.cells import plain_record
from search.core.errors import UserError
from search.core.layout import MODEL_FILE, TRIALS_DIR, trial_dir
from search.front.counts import TrialCounts
from search.service.scheduler import Scheduler, describe, read_progress, study_url, trials_of
from search.service.schemas import (
    SearchRequest,
    SelectRequest,
    Settings,
    Submitted,
    checked_config,
    invalid,
    responses,
)
from search.service.store import FINAL, Job, JobStore


@dataclass(frozen=True)
class Service:
    """What every route works with: how the server was started, the jobs table, the scheduler."""

    settings: Settings
    store: JobStore
    scheduler: Scheduler

    def job_or_404(self, search_id: str) -> Job:
        job = self.store.get(search_id) if len(search_id) <= 32 else None
        if job is None:
            raise HTTPException(404, f"no search {search_id!r}")
        return job

    def progress_of(self, job: Job) -> Any:
        cached = self.scheduler.progress.get(job.id)
        if cached is None or (job.state in FINAL and cached.counted == 0):
            before = cached or TrialCounts(trials_of(job.config))
            cached = read_progress(self.scheduler.runs_dir, job.id, before)
            self.scheduler.progress[job.id] = cached
        return cached

    def run_dir(self, job: Job) -> Path:
        return self.scheduler.runs_dir / job.id

    def records(self, frame: pd.DataFrame, job: Job) -> list[dict[str, Any]]:
        """Rows as JSON: server paths replaced by the model's download URL."""
        return [self.public(row, job) for row in frame.to_dict(orient="records")]

    @staticmethod
    def public(row: dict[str, Any], job: Job) -> dict[str, Any]:
        out = plain_record({k: v for k, v in row.items() if k not in ("path", "artifact")})
        if "trial" in out and (row.get("path") or isinstance(row.get("artifact"), str)):
            out["model_url"] = f"/v1/searches/{job.id}/models/{out['trial']}"
        return out

    def finished_report(self, job: Job) -> Any:
        if job.state != "done":
            raise HTTPException(409, f"search {job.id} is {job.state}, not done")
        from search.front.run import load_report

        try:
            return load_report(self.run_dir(job))
        except UserError as exc:
            raise HTTPException(409, str(exc)) from None


def service_of(request: Request) -> Service:
    """The running service, from the app's state (set by ``create_app``)."""
    return request.app.state.service


BEARER = HTTPBearer(auto_error=False)


def authorised(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(BEARER),  # noqa: B008
) -> None:
    """Puts the bearer scheme in the OpenAPI spec; ``BearerAuth`` has checked the token before any
    body was read, this checks it again (defence in depth)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    token = service_of(request).settings.token
    if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(403, "wrong token")


router = APIRouter()
V1 = [Depends(authorised)]
SERVICE = Depends(service_of)


@router.get("/healthz", tags=["service"])
def healthz(service: Service = SERVICE) -> dict[str, Any]:
    counts = service.store.counts()
    return {"status": "ok", "queued": counts["queued"], "running": counts["running"]}


@router.post("/v1/searches", status_code=202, dependencies=V1, response_model=Submitted, tags=["searches"],
             responses=responses())
def submit(body: SearchRequest, service: Service = SERVICE) -> Submitted:  # type: ignore[valid-type]
    job = service.store.add(checked_config(body, service.settings))
    return Submitted(id=job.id, state=job.state)


@router.get("/v1/searches", dependencies=V1, tags=["searches"], responses=responses())
def list_searches(service: Service = SERVICE) -> dict[str, Any]:
    return {"searches": [describe(job, service.progress_of(job)) for job in service.store.all()]}


@router.get("/v1/searches/{search_id}", dependencies=V1, tags=["searches"], responses=responses(404, 409))
def status(search_id: str, service: Service = SERVICE) -> dict[str, Any]:
    job = service.job_or_404(search_id)
    out = describe(job, service.progress_of(job)) | {"config": job.config, "pareto": None}
    if job.state == "done":
        out["pareto"] = service.records(service.finished_report(job).pareto, job)
    return out


@router.get("/v1/searches/{search_id}/trials", dependencies=V1, tags=["searches"], responses=responses(404))
def trials(search_id: str, service: Service = SERVICE) -> dict[str, Any]:
    job = service.job_or_404(search_id)
    path = service.run_dir(job) / "trials.csv"
    if job.state == "done" and path.is_file():
        return {"trials": service.records(pd.read_csv(path), job)}
    return {"trials": service.records(live_trials(service.run_dir(job), job.id), job)}


@router.get("/v1/searches/{search_id}/models/{trial}", dependencies=V1, tags=["models"],
            response_class=FileResponse, responses=responses(404))
def model(search_id: str, trial: int, service: Service = SERVICE) -> FileResponse:
    job = service.job_or_404(search_id)
    folder = (service.run_dir(job) / TRIALS_DIR).resolve()
    path = (trial_dir(service.run_dir(job), trial) / MODEL_FILE).resolve()
    if trial < 0 or not path.is_relative_to(folder) or not path.is_file():
        raise HTTPException(404, f"search {job.id} has no model for trial {trial}")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{job.id}-trial{trial}.onnx")


@router.post("/v1/searches/{search_id}/select", dependencies=V1, tags=["models"],
             responses=responses(404, 409))
def select(search_id: str, budget: SelectRequest, service: Service = SERVICE) -> dict[str, Any]:
    job = service.job_or_404(search_id)
    report = service.finished_report(job)
    try:
        choice = report.select(budget.max_latency_ms, budget.max_size_mb, budget.min_accuracy, budget.prefer)
    except UserError as exc:
        raise invalid(exc.field, str(exc)) from None
    return choice.to_dict() | {"model": service.public(choice.model, job)}


@router.delete("/v1/searches/{search_id}", status_code=202, dependencies=V1, tags=["searches"],
               responses=responses(404, 409))
def cancel(search_id: str, service: Service = SERVICE) -> dict[str, Any]:
    job = service.job_or_404(search_id)
    state = service.scheduler.cancel(job.id)
    if state is None:
        raise HTTPException(409, f"search {job.id} already ended ({service.store.get(job.id).state})")
    return {"id": job.id, "state": state, "cancel": True}


@router.get("/v1/targets", dependencies=V1, tags=["service"], responses=responses())
def targets() -> dict[str, Any]:
    return {"targets": target_list()}


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
        storage = optuna.storages.RDBStorage(study_url(db), skip_table_creation=True)
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
