"""Runs roots: a local folder as it is, an fsspec URL mirrored through a local staging folder."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest

from search.core.errors import UserError
from search.study.runs_root import RunsRoot, is_url, open_root, staging_for


@pytest.mark.parametrize(("spec", "url"), [
    ("s3://bucket/runs", True),
    ("gs://b/r", True),
    ("file:///tmp/runs", True),
    ("memory://runs", True),
    ("git+ssh://host/repo", True),
    ("sftp://user@host:22/runs", True),
    ("runs", False),
    ("/mnt/nfs/runs", False),
    ("./s3://not-a-scheme", False),
    ("1s3://starts-with-a-digit", False),
    ("C:\\runs", False),
    ("s3:/one-slash", False),
    ("", False),
])
def test_is_url(spec, url):
    assert is_url(spec) is url


def test_a_path_is_used_as_it_is(tmp_path):
    root = open_root(tmp_path / "runs")
    assert root == RunsRoot(tmp_path / "runs")
    assert root.shared is False and root.url is None
    assert open_root("runs") == RunsRoot(Path("runs"))


def test_a_url_is_staged_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPARETO_STAGING", str(tmp_path / "stage"))
    root = open_root("s3://bucket/runs")
    assert root == RunsRoot(tmp_path / "stage", "s3://bucket/runs")
    assert root.shared is True
    assert not (tmp_path / "stage").exists()  # opening creates nothing
    monkeypatch.delenv("EDGEPARETO_STAGING")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert staging_for("s3://bucket/my runs/") == tmp_path / "home/.cache/edgepareto/runs/s3-bucket-my-runs"


def test_a_local_root_only_looks_at_its_folder(tmp_path):
    (tmp_path / "a" / "trials").mkdir(parents=True)
    (tmp_path / "a" / "run.yaml").write_text("x")
    root = RunsRoot(tmp_path)
    assert root.exists("a") and root.exists("a/run.yaml") and not root.exists("b")
    before = sorted(tmp_path.rglob("*"))
    root.push("a")
    root.pull("a")
    root.pull("b")
    assert sorted(tmp_path.rglob("*")) == before


def write_run(local: Path, name: str) -> None:
    (local / name / "trials" / "0000").mkdir(parents=True)
    (local / name / "run.yaml").write_text("trials: 3\n")
    (local / name / "space.yaml").write_text("techniques: {}\n")
    (local / name / "trials" / "0000" / "model.onnx").write_bytes(b"\x08\x07onnx")
    (local / name / "trials" / "0000" / "metrics.json").write_text('{"accuracy": 0.5}')


def files(folder: Path) -> dict[str, bytes]:
    found = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in found}


@pytest.fixture(params=["memory", "file"])
def url(request, tmp_path) -> str:
    if request.param == "memory":
        return f"memory://edgepareto-runs-root-{uuid.uuid4().hex}/runs"
    (tmp_path / "remote").mkdir()
    return f"file://{tmp_path / 'remote'}"


def test_push_then_pull_round_trips_a_run(tmp_path, url):
    here, there = RunsRoot(tmp_path / "here", url), RunsRoot(tmp_path / "there", url)
    write_run(here.local, "demo")
    assert not here.exists("demo")
    here.push("demo")
    assert here.exists("demo") and there.exists("demo/trials/0000/model.onnx")
    assert not there.exists("demo/trials/0001")
    there.pull("demo")
    assert files(there.local) == files(here.local)
    assert set(files(there.local)) == {
        "demo/run.yaml", "demo/space.yaml", "demo/trials/0000/model.onnx", "demo/trials/0000/metrics.json",
    }


def test_not_recursive_copies_the_folders_own_files_only(tmp_path, url):
    here, there = RunsRoot(tmp_path / "here", url), RunsRoot(tmp_path / "there", url)
    write_run(here.local, "demo")
    here.push("demo", recursive=False)
    assert here.exists("demo/run.yaml") and not here.exists("demo/trials/0000/model.onnx")
    here.push("demo/trials/0000")  # a trial's folder, as the runner publishes it
    there.pull("demo", recursive=False)
    assert set(files(there.local)) == {"demo/run.yaml", "demo/space.yaml"}
    there.pull("demo/trials")
    assert files(there.local) == files(here.local)


def test_a_single_file_round_trips(tmp_path, url):
    here, there = RunsRoot(tmp_path / "here", url), RunsRoot(tmp_path / "there", url)
    write_run(here.local, "demo")
    here.push(Path("demo") / "run.yaml")
    there.pull("demo/run.yaml")
    assert files(there.local) == {"demo/run.yaml": b"trials: 3\n"}


def test_pull_skips_files_of_the_same_size_and_replaces_others(tmp_path, url):
    here, there = RunsRoot(tmp_path / "here", url), RunsRoot(tmp_path / "there", url)
    write_run(here.local, "demo")
    here.push("demo")
    (there.local / "demo").mkdir(parents=True)
    (there.local / "demo" / "run.yaml").write_text("trials: 9\n")  # same size: taken as the same file
    (there.local / "demo" / "space.yaml").write_text("changed locally\n")  # another size: replaced
    there.pull("demo")
    assert (there.local / "demo" / "run.yaml").read_text() == "trials: 9\n"
    assert (there.local / "demo" / "space.yaml").read_text() == "techniques: {}\n"


def test_pulling_what_is_not_there_does_nothing(tmp_path, url):
    root = RunsRoot(tmp_path / "here", url)
    root.pull("nothing/here")
    root.pull(".cache/baselines")
    assert not (tmp_path / "here").exists()
    assert not root.exists("nothing")


def test_an_unknown_file_system_is_a_user_error(tmp_path):
    root = RunsRoot(tmp_path, "no-such-protocol-xyz://bucket/runs")
    with pytest.raises(UserError, match=r"^cannot open --runs-dir no-such-protocol-xyz://bucket/runs: "):
        root.exists("a")


def test_the_memory_file_system_sees_what_was_pushed(tmp_path):
    url = f"memory://edgepareto-runs-root-{uuid.uuid4().hex}/runs"
    root = RunsRoot(tmp_path, url)
    write_run(tmp_path, "demo")
    root.push("demo/trials")
    fs, base = fsspec.core.url_to_fs(url)
    assert fs.cat_file(f"{base}/demo/trials/0000/model.onnx") == b"\x08\x07onnx"
    assert not fs.exists(f"{base}/demo/run.yaml")
