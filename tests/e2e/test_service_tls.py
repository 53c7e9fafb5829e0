"""``edgepareto serve`` over HTTPS with a certificate made in the test, and its agent allow-list, over
real HTTP on loopback."""

from __future__ import annotations

import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.service import free_port, serve_command, server_env
from tests.support.tls import Certificate, make_certificate

pytestmark = pytest.mark.slow

TOKEN = "tls-test-token-0123456789"
ALLOWED = "https://127.0.0.1:8765"


@dataclass(frozen=True)
class Running:
    url: str
    certificate: Certificate
    proc: subprocess.Popen

    def client(self) -> httpx.Client:
        verified = ssl.create_default_context(cafile=str(self.certificate.cert))
        return httpx.Client(base_url=self.url, verify=verified, trust_env=False, timeout=30,
                            headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("tls-service")
    certificate = make_certificate(root / "tls")
    (root / "token").write_text(TOKEN)
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        serve_command("--host", "127.0.0.1", "--port", str(port), "--runs-dir", str(root / "runs"),
                      "--data-root", str(root), "--max-running", "0", "--token-file", str(root / "token"),
                      "--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key),
                      "--allow-agent", ALLOWED, "--ca-file", str(certificate.cert)),
        cwd=root, env=server_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    running = Running(f"https://127.0.0.1:{port}", certificate, proc)
    try:
        _wait_healthy(running, root / "server.log")
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _wait_healthy(running: Running, log: Path) -> None:
    deadline = time.monotonic() + 60
    with running.client() as client:
        while True:
            assert running.proc.poll() is None, log.read_text()
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no answer on {running.url}/healthz:\n{log.read_text()}"
            time.sleep(0.2)


def test_https_with_the_ca_file(server):
    with server.client() as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/v1/searches").status_code == 200


def test_an_unverified_certificate_is_refused(server):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/healthz", trust_env=False, timeout=30)  # the system's CAs only
    with pytest.raises(httpx.TransportError):  # plain HTTP on the HTTPS port
        httpx.get(f"{server.url.replace('https://', 'http://')}/healthz", trust_env=False, timeout=30)


def test_only_allowed_agents(server):
    with server.client() as client:
        for body, field in (({"target": "remote:http://10.0.0.1:8765"}, "target"),
                            ({"target": "rpi4", "agent": "http://169.254.169.254:80"}, "agent"),
                            ({"target": "remote:http://127.0.0.1:8765"}, "target")):  # http, not https
            r = client.post("/v1/searches", json=body)
            assert r.status_code == 422, r.text
            [error] = r.json()["detail"]
            assert error["loc"] == ["body", field] and "serve --allow-agent" in error["msg"]
        r = client.post("/v1/searches", json={"target": f"remote:{ALLOWED}", "trials": 2})
        assert r.status_code == 202, r.text
        config = client.get(f"/v1/searches/{r.json()['id']}").json()["config"]
        assert config["target"] == f"remote:{ALLOWED}" and config["ca_file"] == str(server.certificate.cert)
        assert client.post("/v1/searches", json={"ca_file": "/tmp/x.pem"}).status_code == 422
