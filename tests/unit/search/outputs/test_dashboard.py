"""optuna-dashboard reads a finished run's study: named objectives, and trials whose user attributes say
what was tried (techniques and their params), what came out (metrics, latency source) and where the
model file is."""

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pytest

optuna_dashboard = pytest.importorskip("optuna_dashboard")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def dashboard(finished_run: Path) -> Iterator[str]:
    """optuna-dashboard's own WSGI app on loopback over the run's study.db, as
    ``optuna-dashboard sqlite:///runs/NAME/study.db`` serves it."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{finished_run / 'study.db'}")
    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        storage.engine.dispose()


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_dashboard_shows_meaningful_trials(dashboard, finished_run):
    studies = get(f"{dashboard}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["finished"]
    study = get(f"{dashboard}/api/studies/{studies[0]['study_id']}")
    assert study["objective_names"] == ["val_accuracy", "latency_ms", "size_mb"]
    complete = [t for t in study["trials"] if t["state"] == "Complete"]
    assert len(complete) >= 4
    for trial in complete:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        for key in ("techniques", "candidate", "accuracy", "latency_ms", "latency_source", "size_mb",
                    "params", "macs", "artifact"):
            assert key in attrs, (trial["number"], key)
        assert attrs["latency_source"] == "measured"
        assert (finished_run / attrs["artifact"]).is_file()
        assert float(attrs["accuracy"]) == trial["values"][0]
        # the techniques switched on in the params, with their intensities, are the candidate attribute
        switched_on = {
            p["name"] for p in trial["params"] if "." not in p["name"] and p["param_external_value"] == "True"
        }
        assert set(json.loads(attrs["candidate"])) == switched_on, trial["number"]
    with urllib.request.urlopen(f"{dashboard}/dashboard", timeout=30) as page:
        assert b"Optuna Dashboard" in page.read()
