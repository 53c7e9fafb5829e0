"""The service's soak (``edgepareto bench service --soak``) at a small scale: three searches with
``--max-running 2`` polled without pause, the server killed once mid-search and the jobs database made
read-only until a worker has ended under it. What the soak checks must hold (every search done, every
trial seen complete kept, nothing counted twice, no 5xx but while read-only, no request unanswered
but while the server was down); the refused writes are 503, never 500."""

from __future__ import annotations

import json

import pytest

from search.bench.soak import SoakPlan, format_soak, soak_service

pytestmark = pytest.mark.slow

#: The tiny model on the embedded digits, a 1-epoch baseline (trained once per session), quantization.
#: Eight trials of about a second: the kill needs a search caught between its first and last trial,
#: and with three trials a fast machine finished every search before the soak saw one there.
SEARCH = {"model": "test_resnet", "img_size": 16, "epochs": 1, "trials": 8, "space": "quant-only",
          "max_accuracy_drop": 50}


@pytest.mark.timeout(900)
def test_the_soak_keeps_every_search_and_trial(tmp_path, baselines):
    work = tmp_path / "soak"
    baselines.seed(work / "runs", epochs=1)
    plan = SoakPlan(searches=3, max_running=2, kills=1, pollers=2, read_only_max_s=180, timeout_s=600,
                    search=SEARCH)
    result = soak_service(plan, work=work, runs_dir=str(tmp_path), log=print)
    report = format_soak(result)
    assert result.violations == (), report
    assert result.states == {"done": 3}, report
    assert [w.kind for w in result.faults] == ["kill", "read-only"], report
    assert result.read_only_applied, report
    assert result.recovered >= 1, report  # the kill hit a running search, which resumed and finished
    assert result.by_code.get("503", 0) >= 1 and "500" not in result.by_code, report  # refused, 503
    assert result.trials_complete >= 3 * SEARCH["trials"], report
    assert result.by_code["200"] > 50 and result.p99_ms >= result.p50_ms > 0, report
    (saved,) = (tmp_path / "bench").glob("service-soak-*.json")
    assert json.loads(saved.read_text())["violations"] == []
