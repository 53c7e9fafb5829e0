"""What ``POST /v1/searches`` refuses at submit time, before a job is stored: size-like settings
outside ``search.config.bounds`` (the same table as the CLI) and a target that is no target, 422
naming the field; checked without importing onnxruntime or connecting anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from search.config.bounds import BOUNDS
from search.service.app import create_app
from search.service.schemas import SearchRequest, Settings, target_names
from targets import TARGETS

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


# ---------------------------------------------------------------- the target


@pytest.mark.parametrize(("target", "needle"), [
    ("raspberry", "unknown target 'raspberry'"),
    ("rpi3", "did you mean rpi5, rpi4?"),
    ("remote", "needs the agent's URL"),
    ("../outside.yaml", "under the server's data root"),
    ("missing.yaml", "under the server's data root"),
    ("boards/rpi4", "unknown target"),
])
def test_a_target_that_is_no_target_is_422_naming_it(client, target, needle):
    r = client.post("/v1/searches", json={"model": "test_resnet", "target": target}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert "target" in named_fields(r) and needle in r.text, r.text
    assert client.get("/v1/searches", headers=AUTH).json()["searches"] == []


def test_known_targets_and_profile_files_under_the_data_root_are_accepted(client, tmp_path):
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "mine.yaml").write_text("name: mine\n")  # its content is the worker's to read
    for target in ("host", "rpi4", "cortex-m7", "boards/mine.yaml"):
        r = client.post("/v1/searches", json={"model": "test_resnet", "target": target}, headers=AUTH)
        assert r.status_code == 202, (target, r.text)
    stored = client.get(f"/v1/searches/{r.json()['id']}", headers=AUTH).json()["config"]["target"]
    assert stored == str((tmp_path / "boards" / "mine.yaml").resolve())


def test_the_target_names_agree_with_the_registry():
    assert set(target_names()) == set(TARGETS.names()) - {"remote"}


SUBMIT = r"""
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from search.service.app import create_app
from search.service.schemas import Settings

root = Path(sys.argv[1])
token = "t" * 32
app = create_app(Settings(token=token, runs_dir=root / "runs", data_root=root,
                          db_url=f"sqlite:///{root / 'jobs.db'}", max_running=0))
with TestClient(app) as client:
    auth = {"Authorization": "Bearer " + token}
    codes = [client.post("/v1/searches", json={"target": t}, headers=auth).status_code
             for t in ("rpi4", "nowhere")]
print(json.dumps({"codes": codes, "heavy": sorted(m for m in sys.argv[2:] if m in sys.modules)}))
"""


def test_checking_a_target_imports_no_onnxruntime(tmp_path):
    done = subprocess.run([sys.executable, "-c", SUBMIT, str(tmp_path), "onnxruntime", "torch", "timm"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == '{"codes": [202, 422], "heavy": []}'
