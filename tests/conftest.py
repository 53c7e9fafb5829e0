"""Shared fixtures: a tiny timm model, the embedded digits data at a small size, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch

from search.cli.main import main
from search.task.data import load_dataset
from spaces import Context

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "test_resnet", "--img-size", "16", "--epochs", "2", "--quiet"]


@pytest.fixture(scope="session")
def digits16():
    return load_dataset("digits", 16, (0.5,) * 3, (0.5,) * 3, 0, 0.2, 0.2)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


@pytest.fixture
def ctx(digits16, tiny_model):
    return Context(train_x=digits16.train.x[:256], train_y=digits16.train.y[:256], teacher=tiny_model)


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> Path:
    """A runs root shared by the end-to-end tests, so the tiny baseline is trained once."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def finished_run(shared_runs) -> Path:
    """A small finished search (8 trials of the tiny model), shared read-only by the results tests:
    report, select, export. Tests that change files copy it first."""
    run = shared_runs / "finished"
    if not run.exists():
        code = main(["search", "--runs-dir", str(shared_runs), "--name", "finished", "--trials", "8", *TINY])
        assert code == 0 and (run / "pareto.csv").is_file()
    return run


def run_onnx_file(path: Path, x: torch.Tensor) -> np.ndarray:
    """The first output of ``path`` on ``x`` in a fresh onnxruntime CPU session."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def building(run: Path, number: int) -> bool:
    """Trial ``number`` of ``run`` is in its torch or export steps: started, its result not yet
    written (so not yet reported or told either)."""
    folder = run / "trials" / f"{number:04d}"
    return (folder / "params.json").is_file() and not (folder / "metrics.json").exists()


def run_cli(args: list[str], capfd) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = main(args)
    out, err = capfd.readouterr()
    return code, out, err


def run_module(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m search`` in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env,
    )
