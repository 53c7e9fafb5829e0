"""Searches whose latencies come from the device measurement agent (``edgepareto agent`` on loopback):
a ``remote:URL`` target, and a device profile calibrated and searched through ``--agent``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pandas as pd
import pytest

from tests.support.agent import LIMIT, TOKEN, Agent, start_agent, stop_agent
from tests.support.cli import TINY, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[Agent]:
    running = start_agent(tmp_path_factory.mktemp("agent"), "--max-model-mb", str(LIMIT / 1e6))
    yield running
    stop_agent(running)


@pytest.mark.timeout(240)
def test_search_against_the_agent(agent, runs_dir, capfd, monkeypatch):
    """Every latency of a small search comes from the agent. ``runs_dir`` holds the tiny baseline
    already; quantisation-only trials need no fine-tuning."""
    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN", TOKEN)
    runs = runs_dir
    args = ["search", "--runs-dir", str(runs), "--name", "remote", "--trials", "3", "--space", "quant-only",
            "--target", f"remote:{agent.url}", "--repeats", "5", *TINY]
    code, out, err = run_cli(args, capfd)
    assert code == 0, err
    trials = pd.read_csv(runs / "remote" / "trials.csv")
    assert list(trials["state"]) == ["COMPLETE"] * 3, trials["fail_reason"].tolist()
    assert (trials["latency_source"] == "measured:remote").all()
    pareto = pd.read_csv(runs / "remote" / "pareto.csv")
    assert len(pareto) >= 1
    assert (pareto["latency_source"] == "measured:remote").all() and (pareto["latency_ms"] > 0).all()
    summary = json.loads((runs / "remote" / "summary.json").read_text())
    assert agent.url in json.dumps(summary)


@pytest.mark.timeout(600)
def test_profile_target_calibrated_and_searched_through_the_agent(agent, runs_dir, capfd, monkeypatch):
    """``rpi4`` with ``--agent``: calibrated on the device's measurements, then a hybrid search whose
    front is measured on the device and whose trials carry the profile's deployability constraint."""
    monkeypatch.setenv("EDGEPARETO_AGENT_TOKEN", TOKEN)
    runs = runs_dir
    code, out, err = run_cli(
        ["calibrate", "--target", "rpi4", "--agent", agent.url, "--samples", "10", "--model", "test_resnet",
         "--img-size", "16", "--repeats", "3", "--runs-dir", str(runs)], capfd,
    )
    assert code == 0, err
    assert "calibration of rpi4" in out and (runs / "targets" / "rpi4-1t").is_dir()
    args = ["search", "--runs-dir", str(runs), "--name", "rpi4-agent", "--trials", "3", "--space",
            "quant-only", "--target", "rpi4", "--agent", agent.url, "--latency", "hybrid", "--repeats", "5",
            *TINY]
    code, out, err = run_cli(args, capfd)
    assert code == 0, err
    trials = pd.read_csv(runs / "rpi4-agent" / "trials.csv")
    assert len(trials) == 3
    assert set(trials["latency_source"]) <= {"measured:remote", "predicted:calibrated"}
    assert trials["constraints"].str.contains('"deployable"').all() and trials["feasible"].all()
    pareto = pd.read_csv(runs / "rpi4-agent" / "pareto.csv")
    assert len(pareto) >= 1
    assert (pareto["latency_source"] == "measured:remote").all()
    code, out, err = run_cli(
        ["calibrate", "--target", "rpi4", "--samples", "10", "--runs-dir", str(runs)], capfd
    )
    assert code == 2 and "needs measurements on the device" in err
