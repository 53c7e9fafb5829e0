"""``edgepareto serve``: settings checked, then uvicorn serving the app."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from search.core.errors import UserError
from search.core.optional import require
from targets.agent import UsageError, check_token
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


def serve(
    host: str, port: int, runs_dir: Path, data_root: Path, db_url: str | None, max_running: int,
    token_file: str | None, max_body_bytes: int, ray_address: str | None,
) -> None:
    uvicorn = require("uvicorn", "edgepareto serve")

    from search.service.app import Settings, create_app

    if max_running < 0:
        raise UserError("--max-running must be 0 or more")
    if not 0 <= port < 65536:
        raise UserError(f"--port must be 0-65535, got {port}")
    if not data_root.is_dir():
        raise UserError(f"--data-root {data_root} is not a folder")
    runs_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        token=read_token(token_file), runs_dir=runs_dir.resolve(), data_root=data_root.resolve(),
        db_url=db_url or f"sqlite:///{runs_dir.resolve() / 'service.db'}", max_running=max_running,
        max_body_bytes=max_body_bytes, ray_address=ray_address,
    )
    app = create_app(settings)
    print(f"edgepareto serve: http://{host}:{port} (runs in {settings.runs_dir}, jobs in {settings.db_url})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
