"""Reading a finished run, and the service's list, status and trials routes, never import torch, timm or
onnxruntime: checked in a fresh interpreter, on a run folder and jobs table written by the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "timm", "onnxruntime", "torch_pruning")

SCRIPT = r"""
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient

root = Path(sys.argv[1])
from search import load_run
run = load_run(root / "runs" / "finished")
assert len(run.pareto) == 2 and run.select(max_latency_ms=1.0).model["trial"] == 3
from search.service.app import create_app
from search.service.schemas import Settings
from search.service.store import JobStore

db = f"sqlite:///{root / 'jobs.db'}"
store = JobStore(db)
done = store.add({"trials": 4})
store.update(done.id, state="done")
(root / "runs" / "finished").rename(root / "runs" / done.id)
queued = store.add({"trials": 2})
token = "t" * 32
app = create_app(Settings(token=token, runs_dir=root / "runs", data_root=root, db_url=db, max_running=0))
with TestClient(app) as client:
    auth = {"Authorization": "Bearer " + token}
    listed = client.get("/v1/searches", headers=auth).json()["searches"]
    status = client.get(f"/v1/searches/{done.id}", headers=auth).json()
    trials = client.get(f"/v1/searches/{done.id}/trials", headers=auth).json()["trials"]
    waiting = client.get(f"/v1/searches/{queued.id}/trials", headers=auth).json()["trials"]
print(json.dumps({
    "heavy": [m for m in sys.argv[2:] if m in sys.modules],
    "listed": sorted(j["id"] for j in listed), "ids": sorted([done.id, queued.id]),
    "pareto": [r["trial"] for r in status["pareto"]], "trials": len(trials), "waiting": waiting,
}))
"""


def write_run(run: Path) -> None:
    """The three result files of a finished run with a baseline and one Pareto model."""
    run.mkdir(parents=True)
    (run / "pareto.csv").write_text(
        "trial,model,role,techniques,test_accuracy,val_accuracy,latency_ms,latency_source,size_mb,"
        "accuracy_drop_pt,speedup,compression,path\n"
        "0,resnet18,baseline,none,0.98,0.97,2.0,measured,4.0,0.0,1.0,1.0,x\n"
        "3,resnet18,pareto,prune,0.97,0.96,0.5,measured,1.0,1.0,4.0,4.0,y\n"
    )
    (run / "trials.csv").write_text(
        "trial,state,val_accuracy,latency_ms,size_mb,artifact\n"
        "0,COMPLETE,0.97,2.0,4.0,trials/0000/model.onnx\n1,FAIL,,,,\n2,COMPLETE,0.5,0.4,0.9,\n"
        "3,COMPLETE,0.96,0.5,1.0,trials/0003/model.onnx\n"
    )
    (run / "summary.json").write_text(json.dumps({"run": "finished", "config": {"trials": 4}}))


def test_reading_and_the_read_routes_import_no_model_code(tmp_path):
    write_run(tmp_path / "runs" / "finished")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), *HEAVY],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["listed"] == seen["ids"]  # the routes really answered
    assert seen["pareto"] == [0, 3] and seen["trials"] == 4 and seen["waiting"] == []
    assert seen["heavy"] == []
