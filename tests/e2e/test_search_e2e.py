"""A small end-to-end search: tiny timm model, embedded digits, a few trials."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optuna
import pandas as pd
import pytest

from search.candidate.evaluate import input_shape
from search.task.data import load_dataset, model_preprocess
from spaces import TECHNIQUES, TorchTechnique
from spaces.params import FloatParam
from tests.support.cli import TINY, run_cli

pytestmark = pytest.mark.slow


def fresh_session_accuracy(path: str, x: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    preds = np.concatenate([sess.run(None, {name: x[i : i + 50]})[0].argmax(1) for i in range(0, len(x), 50)])
    return float((preds == y).mean())


@pytest.mark.timeout(600)
def test_small_search_end_to_end(runs_dir, capfd):
    args = ["search", "--runs-dir", str(runs_dir), "--name", "e2e", "--trials", "6", *TINY]
    args.remove("--quiet")
    code, out, err = run_cli(args, capfd)
    assert code == 0, err
    # the runs dir holds the session's tiny baseline, trained with the same settings: it is used as is
    assert "baseline: cached" in err and "baseline: training" not in err
    run = runs_dir / "e2e"
    for name in ("run.yaml", "space.yaml", "study.db", "pareto.csv", "trials.csv", "summary.json"):
        assert (run / name).is_file(), name

    # progress: trial i/N, elapsed, stage, best so far
    assert "[1/6 00:" in err and "export" in err and "latency" in err and "best accuracy" in err

    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 6
    first = trials.iloc[0]
    assert first["trial"] == 0 and first["baseline"] and first["techniques"] == "baseline"
    for _, t in trials[trials["state"] == "COMPLETE"].iterrows():
        folder = run / "trials" / f"{t['trial']:04d}"
        assert {"model.onnx", "params.json", "metrics.json"} <= {p.name for p in folder.iterdir()}
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["accuracy"] == t["val_accuracy"] and metrics["latency_ms"] > 0

    # the front, re-evaluated on test: accuracies equal a fresh onnxruntime session's
    pareto = pd.read_csv(run / "pareto.csv")
    assert pareto.iloc[0]["role"].startswith("baseline")
    assert pareto.iloc[0]["speedup"] == 1.0
    prep = model_preprocess("test_resnet", 16, "digits")
    data = load_dataset("digits", 16, prep.mean, prep.std, 0, 0.2, 0.2)
    y = data.test.y.numpy()
    for _, row in pareto.iterrows():  # each at its own input size (a resolution candidate's is smaller)
        x = data.test.at_size(input_shape(Path(row["path"]), (1, 3, 16, 16))[-1]).x.numpy()
        assert fresh_session_accuracy(row["path"], x, y) == row["test_accuracy"]

    # the printed table, and `show` prints it again
    assert "speed-up" in out and "compression" in out and "model.onnx" in out
    table = out.split("\n\nresults:")[0].strip()
    code, shown, _ = run_cli(["show", "e2e", "--runs-dir", str(runs_dir)], capfd)
    *rows, counts, stages = shown.strip().splitlines()
    assert code == 0 and "\n".join(rows) == table
    assert counts == "trials: 6/6 counted: 6 complete, 0 failed, 0 pruned; 0 running, 0 waiting"
    assert stages.startswith("time per stage: ") and "accuracy" in stages and "median trial" in stages

    summary = json.loads((run / "summary.json").read_text())
    assert summary["trials"]["total"] == 6 and summary["preprocessing"]["input_shape"] == [1, 3, 16, 16]

    # still cached: a second run with the same settings does not retrain it
    args2 = ["search", "--runs-dir", str(runs_dir), "--name", "e2e-again", "--trials", "1", *TINY]
    args2.remove("--quiet")
    code, _, err2 = run_cli(args2, capfd)
    assert code == 0 and "baseline: cached" in err2 and "baseline: training" not in err2


class Explode(TorchTechnique):
    """A technique that always fails, to show a failing candidate never crashes the search."""

    name = "explode"
    order = 15
    params = (FloatParam("power", 0.0, 1.0),)

    def apply(self, model, cfg, ctx):
        raise RuntimeError("unsupported op: boom")


@pytest.mark.timeout(180)
def test_failing_candidates_become_fail_trials(runs_dir, tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(TECHNIQUES._items, "explode", Explode)
    space = tmp_path / "space.yaml"
    space.write_text("techniques:\n  explode: {enabled: always}\n  quantize: {mode: [fp16]}\n")
    args = ["search", "--runs-dir", str(runs_dir), "--name", "fails", "--trials", "4",
            "--space", str(space), *TINY]
    code, out, err = run_cli(args, capfd)
    assert code == 0, err
    trials = pd.read_csv(runs_dir / "fails" / "trials.csv")
    assert list(trials["state"]) == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    assert (trials["fail_reason"].iloc[1:] == "RuntimeError: unsupported op: boom").all()
    summary = json.loads((runs_dir / "fails" / "summary.json").read_text())
    assert summary["failure_reasons"] == {"RuntimeError: unsupported op: boom": 3}
    assert "baseline" in out


@pytest.mark.timeout(180)
def test_budgets_are_optuna_constraints(runs_dir, capfd):
    args = ["search", "--runs-dir", str(runs_dir), "--name", "budget", "--trials", "4",
            "--max-size-mb", "0.5", "--space", "quant-only", *TINY]
    code, out, err = run_cli(args, capfd)
    assert code == 0, err
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{runs_dir / 'budget' / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all("max_size_mb" in t.constraints for t in done)
    baseline = done[0]
    assert baseline.constraints["max_size_mb"] == pytest.approx(baseline.user_attrs["size_mb"] - 0.5)
    pareto = pd.read_csv(runs_dir / "budget" / "pareto.csv")
    front = pareto[pareto["role"] == "pareto"]  # the int8 recipe (about 0.4 MB) fits the budget
    assert len(front) >= 1 and (front["size_mb"] <= 0.5).all()
