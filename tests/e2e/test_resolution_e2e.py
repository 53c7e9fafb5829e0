"""A reduced-resolution candidate from search to bundle, on an ImageFolder of JPEGs of varied sizes:
the file, the model card and ``predict.py`` take the candidate's own size, and ``predict.py`` run on
the test images scores what the search's in-process evaluation scored."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from search.candidate.evaluate import input_shape
from search.task.data import load_dataset, model_preprocess
from tests.e2e.test_own_data import jpeg_folder
from tests.support.cli import run_cli

pytestmark = pytest.mark.slow
SIZE = 32


@pytest.mark.timeout(600)
def test_a_reduced_resolution_model_predicts_as_it_was_scored(tmp_path, capfd):
    data = jpeg_folder(tmp_path / "data", per_class=15)
    space = tmp_path / "space.yaml"
    space.write_text("techniques:\n  resolution: {enabled: always, scale: 0.5}\n")
    runs = tmp_path / "runs"
    code, _, err = run_cli(["search", "--data", str(data), "--model", "test_resnet", "--img-size", str(SIZE),
                            "--trials", "2", "--space", str(space), "--epochs", "2", "--workers", "0",
                            "--name", "res", "--runs-dir", str(runs), "--quiet"], capfd)
    assert code == 0, err
    pareto = pd.read_csv(runs / "res" / "pareto.csv")
    row = pareto[pareto["techniques"].str.contains("resolution")]
    assert len(row) == 1, pareto[["trial", "techniques"]]
    trial = int(row["trial"].iloc[0])
    trials = pd.read_csv(runs / "res" / "trials.csv")
    artifact = runs / "res" / trials.loc[trials["trial"] == trial, "artifact"].iloc[0]
    assert input_shape(artifact, (1, 3, SIZE, SIZE)) == (1, 3, 16, 16)

    bundle = tmp_path / "bundle"
    code, _, err = run_cli(["export", "res", "--trial", str(trial), "--to", str(bundle),
                            "--runs-dir", str(runs)], capfd)
    assert code == 0, err
    card = json.loads((bundle / "model.json").read_text())
    assert card["preprocessing"]["image_size"] == 16 and card["input"]["shape"][-1] == 16

    prep = model_preprocess("test_resnet", SIZE, str(data))
    test = load_dataset(str(data), SIZE, prep.mean, prep.std, 0, 0.2, 0.2, preprocess=prep, workers=0).test
    files = [str(data / f) for f in test.files]
    done = subprocess.run([sys.executable, str(bundle / "predict.py"), *files, "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = np.array([p["top"][0]["index"] for p in json.loads(done.stdout)])
    accuracy = float((predicted == np.asarray(test.labels)).mean())
    assert accuracy == pytest.approx(float(row["test_accuracy"].iloc[0]), abs=1 / len(files) + 1e-9)
