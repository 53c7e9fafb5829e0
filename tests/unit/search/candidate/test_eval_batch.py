"""Accuracy is scored as a device runs the artifact: at batch 1 where the graph's result for one image
depends on the rest of the batch (dynamic int8), and every Pareto model of a finished run re-scores
exactly at batch 1 in a fresh session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from torch import nn

from search.candidate.build import export_onnx
from search.candidate.evaluate import EVAL_BATCH, batch_dependent, eval_batch, onnx_accuracy
from search.config.run_config import RunConfig
from search.front.run import load_run
from search.task.data import load_dataset
from spaces.data import TensorSplit
from spaces.quantize import STRATEGIES


def batch1_accuracy(path: Path, split: TensorSplit) -> float:
    """Top-1 accuracy one image at a time, in a fresh session of this test's own."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x, y = split.x.numpy(), split.y.numpy()
    hits = sum(int(session.run(None, {name: x[i : i + 1]})[0].argmax(1)[0] == y[i]) for i in range(len(x)))
    return hits / len(x)


@pytest.fixture(scope="module")
def linear_files(tmp_path_factory) -> tuple[Path, Path, TensorSplit]:
    """A linear classifier as fp32 and dynamic int8 files, and images labelled by the fp32 model. One
    image is 10,000 times brighter than the rest: in a shared batch its range sets the int8 scale, and
    the others are quantised to almost nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10)).eval()
    x = torch.randn(64, 3, 4, 4)
    x[7] *= 10_000
    with torch.no_grad():
        y = model(x).argmax(1)
    folder = tmp_path_factory.mktemp("linear")
    fp32 = folder / "model.onnx"
    export_onnx(model, x[:1], fp32)
    dyn = folder / "model.int8.onnx"
    STRATEGIES["dynamic"](fp32, dyn, {"per_channel": False}, None)
    return fp32, dyn, TensorSplit(x, y)


def test_dynamic_int8_is_found_in_the_graph(linear_files):
    fp32, dyn, _ = linear_files
    assert batch_dependent(dyn) and eval_batch(dyn) == 1
    assert not batch_dependent(fp32) and eval_batch(fp32) == EVAL_BATCH


def test_dynamic_int8_scores_as_one_image_at_a_time(linear_files):
    _, dyn, split = linear_files
    alone = batch1_accuracy(dyn, split)
    assert onnx_accuracy(dyn, split) == alone
    # the difference is real here: scored in one batch, the bright image spoils the others' scale
    assert onnx_accuracy(dyn, split, batch_size=len(split)) < alone


def test_a_batch_independent_graph_scores_the_same_at_any_batch(linear_files):
    fp32, _, split = linear_files
    assert onnx_accuracy(fp32, split) == batch1_accuracy(fp32, split) == 1.0


def test_every_pareto_model_rescores_exactly_at_batch_one(finished_run: Path):
    """Each front model's test accuracy in ``pareto.csv`` equals a fresh batch-1 evaluation."""
    run = load_run(finished_run)
    cfg = RunConfig.from_dict(yaml.safe_load((finished_run / "run.yaml").read_text()))
    prep = json.loads((finished_run / "summary.json").read_text())["preprocessing"]["by_model"]
    for row in run.pareto.itertuples():
        norm = prep[row.model]
        data = load_dataset(cfg.data, cfg.img_size, tuple(norm["mean"]), tuple(norm["std"]), cfg.seed,
                            cfg.val_fraction, cfg.test_fraction)
        assert row.test_accuracy == batch1_accuracy(Path(row.path), data.test), row.techniques
        assert row.eval_batch == eval_batch(Path(row.path))
    assert np.isfinite(run.pareto["test_accuracy"]).all()
