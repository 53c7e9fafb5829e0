"""What the service accepts and answers: settings, request and answer models, and the checks that turn a
request body into a run config (paths confined to the data root, RunConfig's own validation)."""

from __future__ import annotations

import difflib
import importlib.util
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    confloat,
    conint,
    create_model,
)

from search.config.bounds import BOUNDS, Bound
from search.config.objectives import OBJECTIVES
from search.config.run_config import RunConfig
from search.core.errors import UserError
from search.core.paths import CHECKPOINT_SUFFIXES, SPACE_SUFFIXES, is_file_reference, is_name
from search.core.urls import agent_url

#: Settings the server decides, never a request: where runs go, which database holds their study, and
#: the certificate its agents are verified against.
SERVER_FIELDS = ("name", "runs_dir", "storage", "ca_file")
#: Settings that may name files; they must lie under the data root (other values are names).
PATH_FIELDS = ("data", "checkpoint", "teacher", "space")
#: Settings whose values are files or names by ``core.paths.is_file_reference`` (names pass unchanged,
#: and the worker reads them as names, never as files); for the others only these values are names.
NAMED_BY_RULE = {"teacher": CHECKPOINT_SUFFIXES, "space": SPACE_SUFFIXES}
NOT_PATHS = {"data": ("digits",)}
#: Targets registered in code (``targets/host.py``); the device profiles are ``targets/profiles/*.yaml``,
#: and ``remote:URL`` is checked against ``--allow-agent``. A test keeps this in step with the registry.
CODE_TARGETS = ("host",)


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
    #: The agents a request may name (``agent``, ``target: remote:URL``), as ``core.urls.agent_url``
    #: spells them (``serve --allow-agent``); empty: none.
    allowed_agents: tuple[str, ...] = ()
    #: PEM certificate (or CA) that the allowed https agents are verified against (``serve --ca-file``).
    ca_file: str | None = None


#: A JSON number that is finite (Python's JSON reader takes NaN and Infinity; no setting means those).
FiniteFloat = confloat(strict=True, allow_inf_nan=False)


def _pydantic_type(hint: Any, bound: Bound | None = None) -> Any:
    """A RunConfig field type for request bodies: strict, JSON lists for tuples, numbers within the
    setting's ``bound`` (``search.config.bounds``) when it has one."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, typing.Union) else (hint,)
    limits = bound.constraints() if bound else {}
    mapped = []
    for option in options:
        if option is type(None):
            mapped.append(type(None))
        elif option is bool:
            mapped.append(StrictBool)
        elif option is int:
            mapped.append(conint(strict=True, **limits))
        elif option is float:
            mapped.append(conint(strict=True, **limits))
            mapped.append(confloat(strict=True, allow_inf_nan=False, **limits))
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
        spec[f.name] = (_pydantic_type(hints[f.name], BOUNDS.get(f.name)), Field(default=default))
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


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (auth and body limit on every /v1)."""
    text = {401: "no bearer token", 403: "wrong token", 404: "no such search or model",
            409: "the search is not in a state that allows this", 413: "request body too large"}
    return {code: {"model": Problem, "description": text[code]} for code in (401, 403, 413, *codes)}


class Submitted(BaseModel):
    id: str
    state: str


def invalid(field: str | None, message: str) -> RequestValidationError:
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
            if not is_name(value):
                raise invalid(key, f"{key} must be a name, or a path under the server's data root")
            continue  # a model or preset name: the worker never looks it up on disk
        path = _under(settings.data_root, value)
        if path is None:
            raise invalid(key, f"{key} must be a path under the server's data root")
        config[key] = str(path)
    _check_target(config, settings)
    _check_outbound(config, settings)
    if settings.ray_address and "backend" not in config:
        config |= {"backend": "ray", "ray_address": settings.ray_address}
    try:
        RunConfig.from_dict(config)
    except UserError as exc:
        raise invalid(exc.field, str(exc)) from None
    return config


def target_names() -> tuple[str, ...]:
    """The target names a request may give: ``CODE_TARGETS`` and the shipped device profiles, found
    without importing ``targets`` (which loads onnxruntime) so that submitting stays light."""
    spec = importlib.util.find_spec("targets")
    folders = [Path(f) / "profiles" for f in (spec.submodule_search_locations or [])] if spec else []
    return (*CODE_TARGETS, *sorted(p.stem for folder in folders for p in folder.glob("*.yaml")))


def _check_target(config: dict[str, Any], settings: Settings) -> None:
    """``target`` at submit time, never connecting anywhere: a known name, a device profile file under
    the data root (made absolute), or ``remote:URL`` (left to ``_check_outbound``); 422 otherwise."""
    value = config.get("target")
    if not isinstance(value, str) or value.startswith("remote:"):
        return
    if value == "remote":
        raise invalid("target", "target remote needs the agent's URL: remote:http://HOST:PORT")
    if value.endswith((".yaml", ".yml")):  # a device profile of the user's
        path = _under(settings.data_root, value)
        if path is None or not path.is_file():
            raise invalid("target", f"target {value!r}: a profile file must lie under the server's data root")
        config["target"] = str(path)
        return
    names = target_names()
    if value not in names:
        close = difflib.get_close_matches(value, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise invalid("target", f"unknown target {value!r}{hint} (known: {', '.join(names)}, a profile "
                      "file under the data root, or remote:http://HOST:PORT)")


def _check_outbound(config: dict[str, Any], settings: Settings) -> None:
    """The connections a request makes the server's workers open: an agent (``agent``, or ``target:
    remote:URL``) must be on ``--allow-agent``, and ``ray_address`` can only be the server's own; 422
    naming the field otherwise. An allowed https agent is verified against ``--ca-file``."""
    urls = []
    for key, value in (("agent", config.get("agent")), ("target", config.get("target"))):
        if key == "target" and not (isinstance(value, str) and value.startswith("remote:")):
            continue
        if value is None:
            continue
        given = value.removeprefix("remote:") if key == "target" else value
        try:
            url = agent_url(given, field=key)
        except UserError as exc:
            raise invalid(key, str(exc)) from None
        if url not in settings.allowed_agents:
            allowed = f"allowed: {', '.join(settings.allowed_agents)}" if settings.allowed_agents \
                else "it allows none"
            raise invalid(key, f"{key}: the server may not connect to agent {url} (serve --allow-agent URL; "
                          f"{allowed})")
        urls.append(url)
    if settings.ca_file and any(u.startswith("https://") for u in urls):
        config["ca_file"] = settings.ca_file
    if config.get("ray_address") not in (None, settings.ray_address):
        raise invalid("ray_address", "ray_address is the server's to choose (serve --ray-address)")
