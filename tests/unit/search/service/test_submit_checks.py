"""What ``POST /v1/searches`` refuses at submit time, before a job is stored: size-like settings
outside ``search.config.bounds`` (the same table as the CLI), 422 naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from search.config.bounds import BOUNDS
from search.service.app import create_app
from search.service.schemas import SearchRequest, Settings

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path: Path):
    """The real app on a fresh jobs table that queues searches but runs none."""
    settings = Settings(token=TOKEN, runs_dir=tmp_path / "runs", data_root=tmp_path,
                        db_url=f"sqlite:///{tmp_path / 'jobs.db'}", max_running=0)
    with TestClient(create_app(settings)) as c:
        yield c


def named_fields(response) -> set[str]:
    return {str(part) for d in response.json()["detail"] for part in d["loc"]}


@pytest.mark.parametrize(("key", "value"), [
    ("trials", 10**30), ("img_size", 10**30), ("batch_size", 10**9), ("epochs", 10**6),
    ("timeout", 1e30), ("trial_timeout", 10**12), ("repeats", 10**9), ("threads", 10**6),
    ("patch_size", 10**6), ("seed", 2**40), ("sampler_seed", -1), ("cpus_per_trial", 10**6),
])
def test_a_setting_beyond_its_bound_is_422_naming_it(client, key, value):
    r = client.post("/v1/searches", json={"model": "test_resnet", key: value}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert key in named_fields(r), r.text
    assert client.get("/v1/searches", headers=AUTH).json()["searches"] == []  # nothing stored


def test_values_within_bounds_are_accepted(client):
    r = client.post("/v1/searches", json={"model": "test_resnet", "trials": 3, "img_size": 16},
                    headers=AUTH)
    assert r.status_code == 202, r.text


def test_the_request_schema_carries_the_bounds():
    """One table: the OpenAPI schema states the same ranges as ``BOUNDS``."""
    properties = SearchRequest.model_json_schema()["properties"]
    for key, bound in BOUNDS.items():
        numbers = [o for o in properties[key].get("anyOf", [properties[key]]) if o.get("type") != "null"]
        assert numbers, key
        for option in numbers:
            low = option.get("exclusiveMinimum" if bound.open_low else "minimum")
            assert (low, option["maximum"]) == (bound.low, bound.high), (key, option)
