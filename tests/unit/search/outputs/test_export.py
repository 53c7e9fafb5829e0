"""Exporting one trial as a bundle: model.onnx, model.json, and a predict.py that runs without torch."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import search.task.data
from search import load_run
from search.core.errors import UserError
from search.outputs.export import export_trial
from search.task.preprocess import Preprocess

#: predict.py must run with these (and the standard library) only.
ALLOWED = {"numpy", "onnxruntime", "PIL"}
#: Runs predict.py (argv[2:]) with the edgepareto stack unimportable, then writes the top-level
#: modules it imported beyond the standard library to argv[1].
BOOTSTRAP = """
import importlib.abc, json, runpy, sys
BLOCKED = {"torch", "torchvision", "timm", "torch_pruning", "search", "spaces", "targets",
           "sklearn", "pandas"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"predict.py must not import {name}")
sys.meta_path.insert(0, Block())
before = set(sys.modules)
out, script, *args = sys.argv[1:]
sys.argv = [script, *args]
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
finally:
    new = {m.split(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)
    open(out, "w").write(json.dumps(sorted(new)))
sys.exit(code)
"""


def pareto_trial(run: Path) -> pd.Series:
    """A Pareto (non-baseline) row of pareto.csv, or the baseline when the front is the baseline."""
    pareto = pd.read_csv(run / "pareto.csv")
    rows = pareto[pareto["role"] == "pareto"]
    return (rows if len(rows) else pareto).iloc[0]


def predict(bundle: Path, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    """``python predict.py ARGS`` in a fresh interpreter where torch & co cannot be imported."""
    modules = tmp / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, str(modules), str(bundle / "predict.py"), *args],
        cwd=tmp, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    imported = set(json.loads(modules.read_text()))
    assert imported <= ALLOWED, f"predict.py imported {sorted(imported - ALLOWED)}"
    assert "onnxruntime" in imported  # the bootstrap really ran the script
    return proc


def digits_folder(root: Path, per_class: int = 2) -> list[Path]:
    """A few raw digits as 8x8 grayscale PNGs in an ImageFolder tree (as a user would have them),
    plus two larger colour images; the paths in the order ImageFolder loading reads them."""
    digits = load_digits()
    for label in range(10):
        (root / str(label)).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(digits.target == label)[-per_class:]):
            pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, "L").save(root / str(label) / f"d{k}.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8), "RGB").save(root / "0" / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), "RGBA").save(root / "1" / "rgba.png")
    return [f for d in sorted(root.iterdir()) for f in sorted(d.iterdir())]


def pipeline_inputs(root: Path, card: dict, monkeypatch) -> np.ndarray:
    """The images of ``root`` preprocessed by edgepareto's own data pipeline (load_dataset, unsplit)."""
    prep = card["preprocessing"]
    preprocess = Preprocess(prep["image_size"], prep["mean"], prep["std"], crop_pct=1.0, mode="squash")
    transform = search.task.data.eval_transform(preprocess)
    files = [f for d in sorted(root.iterdir()) for f in sorted(d.iterdir())]
    return np.stack([transform(Image.open(f).convert("RGB")).numpy() for f in files])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def bundle(finished_run, tmp_path_factory) -> Path:
    trial = int(pareto_trial(finished_run)["trial"])
    return export_trial(load_run(finished_run), trial, tmp_path_factory.mktemp("bundle") / "b")


def test_bundle_files_and_model_card(finished_run, bundle):
    row = pareto_trial(finished_run)
    summary = json.loads((finished_run / "summary.json").read_text())
    source = finished_run / "trials" / f"{int(row['trial']):04d}" / "model.onnx"
    assert {"model.onnx", "model.json", "predict.py", "README.txt"} <= {p.name for p in bundle.iterdir()}
    assert not [p for p in bundle.parent.iterdir() if p.name.endswith(".tmp")]
    assert (bundle / "model.onnx").read_bytes() == source.read_bytes()
    card = json.loads((bundle / "model.json").read_text())
    assert card["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert (card["run"], card["trial"], card["model"]) == ("finished", row["trial"], row["model"])
    assert card["role"] == row["role"] and card["techniques"] == row["techniques"]
    norm = summary["preprocessing"]["by_model"][row["model"]]
    prep = card["preprocessing"]
    assert (prep["mean"], prep["std"], prep["image_size"]) == (norm["mean"], norm["std"], 16)
    assert card["classes"] == summary["preprocessing"]["classes"]
    m = card["metrics"]
    for key in ("test_accuracy", "val_accuracy", "accuracy_drop_pt", "speedup", "compression", "size_mb"):
        assert m[key] == pytest.approx(row[key]), key
    assert (m["params"], m["macs"]) == (row["params"], row["macs"])
    assert m["latency"]["ms"] == pytest.approx(row["latency_ms"])
    assert m["latency"]["source"] == row["latency_source"] and m["latency"]["target"] == summary["target"]
    assert card["input"]["name"] == "input" and card["input"]["dtype"] == "float32"
    assert card["input"]["shape"][1:] == [3, 16, 16] and isinstance(card["input"]["shape"][0], str)
    assert card["input"]["dynamic_axes"] == [0] and card["input"]["layout"] == "NCHW"
    assert card["output"]["shape"][1:] == [10]
    assert card["onnxruntime"] == summary["machine"]["onnxruntime"] and card["edgepareto"]
    assert isinstance(card["technique_params"], dict) and isinstance(card["search_params"], dict)
    assert f"trial {card['trial']}" in (bundle / "README.txt").read_text()


def test_predict_without_torch_matches_the_pipeline(bundle, tmp_path, monkeypatch):
    """predict.py on image files == the ONNX model in-process on the pipeline's own preprocessing."""
    card = json.loads((bundle / "model.json").read_text())
    files = digits_folder(tmp_path / "images")
    x = pipeline_inputs(tmp_path / "images", card, monkeypatch)
    assert len(x) == len(files)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = softmax(session.run(None, {"input": x})[0].astype(np.float64))

    out = predict(bundle, *map(str, files), "--json", "--top", "2", tmp=tmp_path).stdout
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(f) for f in files]
    for r, p in zip(results, expected):
        assert r["top"][0]["index"] == int(p.argmax())
        assert r["top"][0]["class"] == card["classes"][int(p.argmax())]
        assert r["top"][0]["probability"] == pytest.approx(p.max(), abs=1e-4)
        assert len(r["top"]) == 2 and r["top"][1]["probability"] <= r["top"][0]["probability"]
    digits = [i for i, f in enumerate(files) if f.name.startswith("d")]  # the model does read digits
    hits = sum(results[i]["top"][0]["class"] == files[i].parent.name for i in digits)
    assert hits >= len(digits) // 2

    # .npy: a preprocessed N x 3 x S x S batch is used as it is; an H x W x 3 uint8 array is an image
    np.save(tmp_path / "batch.npy", x[:3])
    rgba = next(i for i, f in enumerate(files) if f.name == "rgba.png")
    rgb = np.asarray(Image.open(files[rgba]).convert("RGB"))
    np.save(tmp_path / "image.npy", rgb)
    text = predict(bundle, str(tmp_path / "batch.npy"), str(tmp_path / "image.npy"), tmp=tmp_path).stdout
    lines = text.splitlines()
    assert len(lines) == 4
    for i, line in enumerate(lines[:3]):
        name, best = line.split(": ")
        assert name == f"{tmp_path / 'batch.npy'}[{i}]"
        label, prob = best.split()
        assert label == card["classes"][int(expected[i].argmax())]
        assert float(prob) == pytest.approx(expected[i].max(), abs=1e-4)
    label, prob = lines[3].split(": ")[1].split()  # as the RGBA file it came from
    assert label == results[rgba]["top"][0]["class"]
    assert float(prob) == pytest.approx(results[rgba]["top"][0]["probability"], abs=1e-4)


def test_predict_reports_an_unreadable_input(bundle, tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    proc = subprocess.run(
        [sys.executable, str(bundle / "predict.py"), str(tmp_path / "bad.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_export_a_trial_off_the_front(finished_run, tmp_path):
    """A completed trial that is not on the front. Which trials are depends on measured latencies, so
    when all are on it, a copy of the run takes one Pareto row off its front."""
    run = finished_run
    trials = pd.read_csv(run / "trials.csv")
    front = pd.read_csv(run / "pareto.csv")
    done = trials[(trials["state"] == "COMPLETE") & ~trials["trial"].isin(front["trial"])]
    if done.empty:
        run = tmp_path / "finished"
        shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("study.db*"))
        dropped = int(front.loc[front["role"] == "pareto", "trial"].iloc[-1])
        front[front["trial"] != dropped].to_csv(run / "pareto.csv", index=False)
        done = trials[trials["trial"] == dropped]
    row = done.iloc[0]
    bundle = export_trial(load_run(run), int(row["trial"]), tmp_path / "b")
    card = json.loads((bundle / "model.json").read_text())
    assert card["role"] == "other" and card["metrics"]["test_accuracy"] is None
    assert card["metrics"]["val_accuracy"] == pytest.approx(row["val_accuracy"])
    assert card["metrics"]["latency"]["ms"] == pytest.approx(row["latency_ms"])


def test_existing_empty_folder_is_fine(finished_run, tmp_path):
    (tmp_path / "b").mkdir()
    assert (export_trial(load_run(finished_run), 0, tmp_path / "b") / "model.onnx").is_file()


def test_refusals(finished_run, tmp_path):
    with pytest.raises(UserError, match=r"no trial 999 .*Pareto") as err:
        export_trial(load_run(finished_run), 999, tmp_path / "b")
    assert "\n" not in str(err.value)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_trial(load_run(finished_run), 0, busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"] and (busy / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        export_trial(load_run(finished_run), 0, tmp_path / "file")
    with pytest.raises(UserError, match="no run at"):
        export_trial(load_run(tmp_path / "nothing"), 0, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "file"]


def test_failed_trial_and_run_without_results(finished_run, tmp_path):
    run = tmp_path / "finished"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("*.onnx", "study.db*"))
    trials = pd.read_csv(run / "trials.csv", dtype={"fail_reason": object})
    trials.loc[1, ["state", "fail_reason"]] = ["FAIL", "prune: the model has\nno prunable layers"]
    trials.to_csv(run / "trials.csv", index=False)
    with pytest.raises(UserError, match=r"trial 1 .*did not complete \(FAIL: prune: the model has no") as err:
        export_trial(load_run(run), 1, tmp_path / "b")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"trial 0 .*no model file"):  # the copy left the .onnx files out
        export_trial(load_run(run), 0, tmp_path / "b")
    (run / "summary.json").unlink()
    with pytest.raises(UserError, match="no results yet"):
        export_trial(load_run(run), 0, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_failure_while_writing_leaves_nothing(finished_run, tmp_path, monkeypatch):
    monkeypatch.setattr("search.outputs.export._readme", lambda card: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export_trial(load_run(finished_run), 0, tmp_path / "out" / "b")
    assert list((tmp_path / "out").iterdir()) == []


def test_card_follows_the_run_files(finished_run, tmp_path):
    """Mean and std are the trial's base model's; a predicted latency says so, with its error."""
    run = tmp_path / "finished"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("study.db*"))
    summary = json.loads((run / "summary.json").read_text())
    row = pareto_trial(run)
    summary["preprocessing"]["by_model"][row["model"]] = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    (run / "summary.json").write_text(json.dumps(summary))
    pareto = pd.read_csv(run / "pareto.csv")
    pareto["latency_source"], pareto["latency_error_pct"] = "predicted:calibrated", 8.4
    pareto.to_csv(run / "pareto.csv", index=False)
    bundle = export_trial(load_run(run), int(row["trial"]), tmp_path / "b")
    card = json.loads((bundle / "model.json").read_text())
    assert (card["preprocessing"]["mean"], card["preprocessing"]["std"]) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert card["metrics"]["latency"]["label"] == "predicted ±8%"
    assert card["metrics"]["latency"]["error_pct"] == 8.4
