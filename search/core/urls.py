"""Agent URLs: the one spelling of ``http(s)://HOST:PORT`` that the remote target connects to and the
service's ``--allow-agent`` list is compared in (standard library only, so the service's checks never
import onnxruntime)."""

from __future__ import annotations

import urllib.parse

from search.core.errors import UserError

EXAMPLE = "use remote:http://HOST:PORT, e.g. --target remote:http://192.168.1.20:8765"


def agent_url(url: str | None, field: str | None = None) -> str:
    """``http(s)://host:port`` with nothing after it but an optional ``/``, scheme and host in lower
    case; a ``UserError`` (about ``field``) otherwise."""
    if not url:
        raise UserError(f"target remote needs the agent's URL: {EXAMPLE}", field=field)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise UserError(f"bad agent URL {url!r}: {EXAMPLE}", field=field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None \
            or parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise UserError(f"bad agent URL {url!r}: {EXAMPLE}", field=field)
    return f"{parts.scheme}://{parts.netloc.lower()}"
