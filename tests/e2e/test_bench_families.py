"""``edgepareto bench families`` end to end: a search per model, one row each, on tiny models."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import run_cli

pytestmark = pytest.mark.slow


def test_bench_families_prints_one_row_per_model(tmp_path, capfd):
    code, out, err = run_cli([
        "bench", "families", "--model", "test_resnet,test_efficientnet", "--trials", "3", "--epochs", "2",
        "--img-size", "16", "--runs-dir", str(tmp_path)], capfd)
    assert code == 0, err
    table = out.strip().splitlines()[-3:]
    assert table[0].split()[:2] == ["model", "size"]
    assert table[1].startswith(" test_resnet") or table[1].split()[0] == "test_resnet"
    assert table[2].split()[0] == "test_efficientnet" and "16 px" in table[2]
    (saved,) = tmp_path.glob("bench-families-*.json")
    rows = json.loads(saved.read_text())
    assert [r["model"] for r in rows] == ["test_resnet", "test_efficientnet"]
    assert rows[1]["family"] == "efficientnet" and rows[0]["family"] == "resnet"
    for r in rows:
        assert r["trials"] == 3 and 0 <= r["baseline_test"] <= 1 and r["best_speedup"] >= 1.0
        assert set(r["recalibrated"]) == {"30%", "50%"}
    assert rows[0]["recalibrated_with"] in ("l1", "l2", "taylor")  # the best of the default space's
    assert rows[1]["recalibrated_with"] == "taylor"  # the mobile space's only criterion
