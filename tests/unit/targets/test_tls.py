"""HTTPS between the remote target and the agent, with a certificate made in the test: verified with
``--ca-file``, refused in one clear line without it, and bad TLS settings are one line and exit 2."""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Iterator

import pytest

from search.core.errors import UserError
from targets import create_target
from targets.latency import plan_latency
from tests.support.agent import TOKEN, Agent, heavy_model, start_agent, stop_agent
from tests.support.tls import Certificate, make_certificate


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_agent(tmp_path_factory, certificate) -> Iterator[Agent]:
    folder = tmp_path_factory.mktemp("tls-agent")
    running = start_agent(folder, "--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key))
    yield running
    stop_agent(running)


@pytest.fixture(autouse=True)
def _token(monkeypatch) -> None:
    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN", TOKEN)


def test_the_agent_serves_https(tls_agent, certificate):
    assert tls_agent.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(certificate.cert))
    verified = urllib.request.HTTPSHandler(context=context)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), verified)
    with opener.open(f"{tls_agent.url}/healthz", timeout=30) as answer:
        assert answer.status == 200
    with pytest.raises(OSError):  # plain HTTP to the HTTPS port gets no answer (reset, or closed)
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            tls_agent.url.replace("https://", "http://") + "/healthz", timeout=30
        )


def test_the_remote_target_measures_over_https_with_the_ca_file(tls_agent, certificate, tmp_path):
    path = tmp_path / "heavy.onnx"
    path.write_bytes(heavy_model())
    target = create_target(f"remote:{tls_agent.url}", repeats=5, ca_file=str(certificate.cert))
    assert target.check()["agent"].startswith("edgepareto-agent/")
    latency = target.latency(path, (1, 16, 8, 8))
    assert latency.source == "measured:remote" and latency.repeats == 5 and latency.median_ms > 0


def test_an_unverified_certificate_is_refused_in_one_line(tls_agent, tmp_path):
    other = make_certificate(tmp_path, "other")  # a CA that did not sign the agent's certificate
    cases = ((None, "by the system's CAs"), (str(other.cert), f"by the CA in --ca-file {other.cert}"))
    for ca_file, by in cases:
        with pytest.raises(UserError) as refused:
            create_target(f"remote:{tls_agent.url}", ca_file=ca_file).check()
        message = str(refused.value)
        assert message.startswith(f"agent {tls_agent.url}: its TLS certificate is not trusted (")
        assert by in message and "pass --ca-file" in message
        assert "\n" not in message and "_ssl.c" not in message


def test_plain_http_to_an_https_agent_says_so(tls_agent):
    with pytest.raises(UserError, match="not reachable: .* Does it serve https"):
        create_target(f"remote:{tls_agent.url.replace('https://', 'http://')}").check()


def test_https_to_a_plain_agent_says_so(tmp_path):
    plain = start_agent(tmp_path)
    try:
        with pytest.raises(UserError, match=r"TLS failed \(.*\); does it serve https"):
            create_target(f"remote:{plain.url.replace('http://', 'https://')}").check()
    finally:
        stop_agent(plain)


def test_bad_ca_files_are_one_line(tmp_path, certificate):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    url = "remote:https://127.0.0.1:9"
    with pytest.raises(UserError, match=r"^--ca-file .*missing.pem: no such file$"):
        create_target(url, ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(UserError, match=r"^--ca-file .*garbage.pem: not a PEM certificate \(") as bad:
        create_target(url, ca_file=str(garbage))
    assert "\n" not in str(bad.value) and "_ssl.c" not in str(bad.value)
    with pytest.raises(UserError, match="plain http"):
        create_target("remote:http://127.0.0.1:9", ca_file=str(certificate.cert))
    with pytest.raises(UserError, match="host has no agent"):
        plan_latency("host", None, None, 1, 5, tmp_path, ca_file=str(certificate.cert))
    with pytest.raises(UserError, match="no such file"):
        plan_latency("rpi4", "measure", "https://127.0.0.1:9", 1, 5, tmp_path, str(tmp_path / "x.pem"))


def test_cli_tls_errors_exit_2(tmp_path, certificate, capsys):
    from search.cli.main import main as cli
    from targets.agent import main as agent

    token = tmp_path / "token"
    token.write_text(TOKEN)
    missing = str(tmp_path / "missing.pem")
    for argv in (["--tls-cert", str(certificate.cert)], ["--tls-cert", missing, "--tls-key", missing],
                 ["--tls-cert", str(certificate.key), "--tls-key", str(certificate.cert)]):
        assert agent(["--port", "0", "--token-file", str(token), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("edgepareto agent: error: ") and err.count("\n") == 1, err
    assert cli(["calibrate", "--target", "remote:https://127.0.0.1:9", "--ca-file", missing]) == 2
    err = capsys.readouterr().err
    assert err == f"edgepareto: error: --ca-file {missing}: no such file\n"
