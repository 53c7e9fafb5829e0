"""Property-based fuzzing of the service's served OpenAPI spec (schemathesis): no request, valid or not,
gets a 5xx. The server runs with --max-running 0, so fuzzed valid searches only queue and never train.

Every operation of the spec is fuzzed with hypothesis inside one test per check set (schemathesis'
pytest integration, ``from_fixture``, does not work with this pytest), and the failures of all
operations are reported together. Each test fuzzes a server of its own and ends by checking that it is
still healthy and idle, so no result depends on which tests ran before.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance, status_code_conformance

from tests.support.service import Server, get, strict_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EXAMPLES = 40


@pytest.fixture
def fuzz_server(tmp_path):
    """A fresh server for each test (queued searches from one test never reach another's answers)."""
    with Server(tmp_path / "service-fuzz", max_running=0) as s:
        yield s


@pytest.fixture
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(
        f"{fuzz_server.url}/openapi.json", headers=fuzz_server.auth, proxies={"http": None, "https": None},
    )


@pytest.fixture(scope="module")
def session():
    """Straight to the server: no proxy from the environment."""
    with requests.Session() as s:
        s.trust_env = False
        yield s


def fuzz(
    api_schema, server: Server, session: requests.Session, mode: GenerationMode, examples: int,
    search_id: str | None = None, **validate,
) -> dict[str, str]:
    """Fuzz every operation (with ``search_id``: those of one search, its id fixed); returns
    {operation: failure} for those that failed."""
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    for operation in operations:
        fixed = {}
        if search_id is not None:
            names = [p.name for p in operation.path_parameters]
            if not names:
                continue
            fixed = {names[0]: search_id}

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed or None))
        def check(case):
            case.call_and_validate(headers=server.auth, session=session, timeout=30, **validate)

        try:
            check()
        except Unsatisfiable:  # negative mode, an operation without parameters: nothing to break
            assert mode == GenerationMode.NEGATIVE, operation.label
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # (schemathesis' FailureGroup is an exception group) report every
            failures[operation.label] = _describe(exc)  # operation, not just the first failing one
    return failures


def assert_healthy_and_idle(server: Server) -> None:
    """After fuzzing: the server answers, and no search started under --max-running 0."""
    health = strict_json(get(f"{server.url}/healthz"))
    assert health["status"] == "ok" and health["running"] == 0, health
    assert not server.children(), "a worker process started under --max-running 0"


def report(failures: dict[str, str]) -> str:
    return "\n\n".join(f"{op}:\n{text}" for op, text in failures.items())


def _describe(exc: BaseException) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    for sub in getattr(exc, "exceptions", ()):
        parts.append(f"  - {type(sub).__name__}: {sub}")
    return "\n".join(parts)[:4000]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors(api_schema, fuzz_server, session, mode):
    failures = fuzz(api_schema, fuzz_server, session, mode, EXAMPLES, checks=[not_a_server_error])
    assert not failures, report(failures)
    assert_healthy_and_idle(fuzz_server)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors_on_a_real_search(api_schema, fuzz_server, session, mode):
    """The same, with the id of a real (queued) search, so requests get past the id lookup."""
    with fuzz_server.client() as c:
        r = c.post("/v1/searches", json={"model": "test_resnet", "img_size": 16, "trials": 2})
        assert r.status_code == 202, r.text
        search_id = strict_json(r)["id"]
    failures = fuzz(api_schema, fuzz_server, session, mode, EXAMPLES, search_id=search_id,
                    checks=[not_a_server_error])
    assert not failures, report(failures)
    assert_healthy_and_idle(fuzz_server)


def test_responses_conform_to_the_spec(api_schema, fuzz_server, session):
    """Schemathesis' default checks (content types, bodies and headers as documented, negative data
    rejected, ...), but for positive_data_acceptance: the spec cannot say all of RunConfig's rules (a
    patch size dividing the image size, --gpus-per-trial needing ray, ...), so some schema-valid
    searches are rightly 422; and status codes, checked on their own below."""
    failures = fuzz(
        api_schema, fuzz_server, session, GenerationMode.POSITIVE, EXAMPLES // 2,
        excluded_checks=[positive_data_acceptance, status_code_conformance],
    )
    assert not failures, report(failures)
    assert_healthy_and_idle(fuzz_server)


def test_every_status_code_is_documented(api_schema, fuzz_server, session):
    """Each answer's status code is one the spec lists for the operation (404, 409, ... included)."""
    failures = fuzz(api_schema, fuzz_server, session, GenerationMode.POSITIVE, EXAMPLES // 2,
                    checks=[status_code_conformance])
    assert not failures, report(failures)
    assert_healthy_and_idle(fuzz_server)


def test_the_server_is_still_healthy_and_idle(api_schema, fuzz_server, session):
    """After valid and invalid requests of every operation (whatever they answered), the server is
    healthy and idle, and a search queued before them is still queued, untouched."""
    with fuzz_server.client() as c:
        r = c.post("/v1/searches", json={"model": "test_resnet", "img_size": 16, "trials": 2})
        assert r.status_code == 202, r.text
        search_id = strict_json(r)["id"]
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        fuzz(api_schema, fuzz_server, session, mode, EXAMPLES // 4)
    assert_healthy_and_idle(fuzz_server)
    with fuzz_server.client() as c:
        assert strict_json(c.get(f"/v1/searches/{search_id}"))["state"] == "queued"
