"""No outbound connection chosen by a request: an agent (``agent``, ``target: remote:URL``) must be on
the server's ``--allow-agent`` list, and ``ray_address`` is the server's own (422 naming the field)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from search.service.schemas import SearchRequest, Settings, checked_config

DEVICE = "http://192.168.1.20:8765"


def settings(tmp_path: Path, *allowed: str, **more: object) -> Settings:
    return Settings(token="t" * 16, runs_dir=tmp_path, data_root=tmp_path, db_url="sqlite://",
                    allowed_agents=allowed, **more)  # type: ignore[arg-type]


def refused(body: dict, server: Settings) -> tuple[str, str]:
    """(field, message) of the 422 that ``body`` gets."""
    with pytest.raises(RequestValidationError) as exc:
        checked_config(SearchRequest(**body), server)
    [error] = exc.value.errors()
    return error["loc"][1], error["msg"]


@pytest.mark.parametrize("body, field", [
    ({"target": f"remote:{DEVICE}"}, "target"),
    ({"target": "rpi4", "agent": DEVICE}, "agent"),
])
def test_no_agent_is_allowed_by_default(tmp_path, body, field):
    expected = (
        f"{field}: the server may not connect to agent {DEVICE} (serve --allow-agent URL; it allows none)"
    )
    assert refused(body, settings(tmp_path)) == (field, expected)


def test_only_listed_agents(tmp_path):
    server = settings(tmp_path, DEVICE, "https://pi5.lan:8765")
    for body in ({"target": f"remote:{DEVICE}"}, {"target": "rpi4", "agent": DEVICE},
                 {"target": "remote:HTTP://192.168.1.20:8765/"}, {"target": "rpi5", "agent": "https://PI5.lan:8765"}):
        assert checked_config(SearchRequest(**body), server)["target"] == body["target"]
    field, message = refused({"target": "remote:http://192.168.1.20:9999"}, server)
    assert field == "target" and "allowed: http://192.168.1.20:8765, https://pi5.lan:8765" in message
    assert refused({"target": "rpi4", "agent": "http://10.0.0.1:80"}, server)[0] == "agent"
    assert refused({"target": "rpi4", "agent": "http://user@192.168.1.20:8765"}, server)[0] == "agent"
    assert refused({"target": "remote:ftp://192.168.1.20:8765"}, server)[0] == "target"
    assert refused({"target": "remote:"}, server)[0] == "target"


def test_a_host_or_profile_target_connects_nowhere(tmp_path):
    for body in ({}, {"target": "host"}, {"target": "rpi4"}):
        assert "agent" not in checked_config(SearchRequest(**body), settings(tmp_path))


def test_the_servers_ca_file_goes_with_an_allowed_https_agent(tmp_path):
    server = settings(tmp_path, DEVICE, "https://pi5.lan:8765", ca_file="/etc/edgepareto/agents.pem")
    https = checked_config(SearchRequest(target="remote:https://pi5.lan:8765"), server)
    assert https["ca_file"] == "/etc/edgepareto/agents.pem"
    assert "ca_file" not in checked_config(SearchRequest(target=f"remote:{DEVICE}"), server)
    with pytest.raises(ValidationError):  # a request never names the certificate itself
        SearchRequest(target="remote:https://pi5.lan:8765", ca_file="/tmp/mine.pem")


def test_ray_address_is_the_servers(tmp_path):
    body = {"backend": "ray", "ray_address": "ray://elsewhere:10001"}
    assert refused(body, settings(tmp_path))[0] == "ray_address"
    assert refused(body, settings(tmp_path, ray_address="ray://head:10001"))[0] == "ray_address"
    same = checked_config(SearchRequest(backend="ray", ray_address="ray://head:10001"),
                          settings(tmp_path, ray_address="ray://head:10001"))
    assert same["ray_address"] == "ray://head:10001"


def test_serve_checks_its_flags_in_one_line(tmp_path, capsys):
    from search.cli.main import main

    token = tmp_path / "token"
    token.write_text("x" * 32)
    base = ["serve", "--token-file", str(token), "--runs-dir", str(tmp_path / "runs"),
            "--data-root", str(tmp_path)]
    cases = {
        ("--allow-agent", "192.168.1.20:8765"): "--allow-agent: bad agent URL '192.168.1.20:8765'",
        ("--tls-cert", str(token)): "--tls-cert and --tls-key go together",
        ("--tls-cert", str(token), "--tls-key", str(token)):
            f"--tls-cert {token} / --tls-key {token}: not a PEM",
        ("--ca-file", str(tmp_path / "nope.pem")): f"--ca-file {tmp_path / 'nope.pem'}: no such file",
    }
    for extra, start in cases.items():
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"edgepareto: error: {start}") and err.count("\n") == 1, err
