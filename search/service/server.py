"""``edgepareto serve``: settings checked, then uvicorn serving the app."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from search.core.errors import UserError
from search.core.optional import require
from search.core.urls import agent_url
from targets.agent import UsageError, check_token, server_tls
from targets.agent import read_token as read_agent_token

TOKEN_ENV = "EDGEPARETO_TOKEN"
MIN_TOKEN = 16


def read_token(token_file: str | None) -> str:
    """The bearer token from ``token_file``, else ``$EDGEPARETO_TOKEN``; required, by the agent's rule
    (``targets.agent.check_token``) and at least ``MIN_TOKEN`` characters."""
    env = os.environ.get(TOKEN_ENV, "")
    if not token_file and not env.strip():
        raise UserError(f"serve needs a bearer token: --token-file FILE or ${TOKEN_ENV}")
    try:
        if token_file:
            return read_agent_token(token_file, MIN_TOKEN)
        return check_token(env, f"${TOKEN_ENV}", MIN_TOKEN)
    except UsageError as exc:
        raise UserError(str(exc)) from None


def allowed_agents(urls: list[str] | None) -> tuple[str, ...]:
    """``--allow-agent`` values as ``core.urls.agent_url`` spells them (a bad one is a ``UserError``)."""
    out = []
    for url in urls or ():
        try:
            out.append(agent_url(url))
        except UserError as exc:
            raise UserError(f"--allow-agent: {exc}") from None
    return tuple(dict.fromkeys(out))


def check_files(tls_cert: str | None, tls_key: str | None, ca_file: str | None) -> None:
    """``--tls-cert``/``--tls-key`` load as a certificate and its key, ``--ca-file`` as a PEM
    certificate: a ``UserError`` naming the one that does not."""
    try:
        server_tls(tls_cert, tls_key)
    except UsageError as exc:
        raise UserError(str(exc)) from None
    if ca_file:
        from targets.remote import client_tls

        client_tls(ca_file)


def serve(
    host: str, port: int, runs_dir: Path, data_root: Path, db_url: str | None, max_running: int,
    token_file: str | None, max_body_bytes: int, ray_address: str | None,
    allow_agent: list[str] | None = None, tls_cert: str | None = None, tls_key: str | None = None,
    ca_file: str | None = None,
) -> None:
    uvicorn = require("uvicorn", "edgepareto serve")

    from search.service.app import Settings, create_app

    if max_running < 0:
        raise UserError("--max-running must be 0 or more")
    if not 0 <= port < 65536:
        raise UserError(f"--port must be 0-65535, got {port}")
    if not data_root.is_dir():
        raise UserError(f"--data-root {data_root} is not a folder")
    agents = allowed_agents(allow_agent)
    check_files(tls_cert, tls_key, ca_file)
    runs_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        token=read_token(token_file), runs_dir=runs_dir.resolve(), data_root=data_root.resolve(),
        db_url=db_url or f"sqlite:///{runs_dir.resolve() / 'service.db'}", max_running=max_running,
        max_body_bytes=max_body_bytes, ray_address=ray_address, allowed_agents=agents,
        ca_file=str(Path(ca_file).expanduser().resolve()) if ca_file else None,
    )
    app = create_app(settings)
    tls = {"ssl_certfile": os.path.expanduser(tls_cert), "ssl_keyfile": os.path.expanduser(tls_key)} \
        if tls_cert and tls_key else {}
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    print(f"edgepareto serve: {url} (runs in {settings.runs_dir}, jobs in {settings.db_url})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", **tls)
