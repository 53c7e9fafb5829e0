"""The evaluation transform through export: summary.json records it, model.json and the README carry
it, and predict.py (without torch) applies it to image files of any size and aspect ratio."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm.data
from PIL import Image

from search import load_run
from search.outputs.export import export_trial
from search.task.preprocess import Preprocess
from tests.unit.search.outputs.test_export import pareto_trial, predict, softmax

#: (width, height, suffix) of the image files: landscape, portrait, square, near-square, larger than S.
FILES = [(300, 200, "jpg"), (150, 411, "jpg"), (97, 64, "jpg"), (40, 40, "jpg"), (23, 37, "png")]
#: The keys summary.json had before the transform was recorded.
OLD_KEYS = ("input_name", "input_shape", "layout", "mean", "std", "classes", "by_model")


def images(root: Path) -> list[Path]:
    """Smooth colour gradients with noise (a digit-like blob in the middle), saved at each size."""
    root.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for w, h, suffix in FILES:
        yy, xx = np.mgrid[0:h, 0:w]
        blob = 200 * (np.hypot((xx - w / 2) / w, (yy - h / 2) / h) < 0.25)
        base = np.stack([xx * 255 / w, yy * 255 / h, blob], axis=-1)
        pixels = np.clip(base + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8)
        files.append(root / f"{w}x{h}.{suffix}")
        Image.fromarray(pixels, "RGB").save(files[-1])
    return files


def timm_inputs(files: list[Path], prep: Preprocess) -> np.ndarray:
    """The files through timm's own eval transform for ``prep`` (squash: timm's squash at crop_pct 1)."""
    transform = timm.data.create_transform(
        input_size=(3, prep.img_size, prep.img_size), is_training=False, interpolation=prep.interpolation,
        mean=prep.mean, std=prep.std, crop_pct=prep.crop_pct,
        crop_mode="center" if prep.mode == "crop" else "squash",
    )
    out = []
    for f in files:
        with Image.open(f) as image:
            out.append(transform(image.convert("RGB")).numpy())
    return np.stack(out)


def rewrite_summary(run: Path, tmp: Path, edit) -> Path:
    """A copy of ``run`` whose summary.json's "preprocessing" block went through ``edit``."""
    copy = tmp / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("study.db*"))
    summary = json.loads((copy / "summary.json").read_text())
    edit(summary["preprocessing"])
    (copy / "summary.json").write_text(json.dumps(summary))
    return copy


def predicted(bundle: Path, files: list[Path], tmp: Path) -> np.ndarray:
    """predict.py's probabilities of every class for each file, in class order."""
    results = json.loads(predict(bundle, *map(str, files), "--json", "--top", "1000", tmp=tmp).stdout)
    assert [r["image"] for r in results] == [str(f) for f in files]
    probs = np.zeros((len(files), len(results[0]["top"])))
    for i, r in enumerate(results):
        for t in r["top"]:
            probs[i, t["index"]] = t["probability"]
    return probs


def in_process(bundle: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return softmax(session.run(None, {"input": x})[0].astype(np.float64))


def test_summary_records_the_transform_per_model(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    prep = summary["preprocessing"]
    assert set(OLD_KEYS) <= set(prep)
    first = Preprocess.from_dict(prep)
    assert {**first.to_dict(), "transform": first.describe()}.items() <= prep.items()
    for entry in prep["by_model"].values():
        p = Preprocess.from_dict(entry)
        assert entry == {**p.to_dict(), "transform": p.describe()}
    # the embedded digits are stretched to S x S
    assert (prep["mode"], prep["crop_pct"], prep["img_size"]) == ("squash", 1.0, 16)


def test_a_crop_bundle_predicts_as_timm_transforms(finished_run, tmp_path):
    """A run whose summary says mode crop (bicubic, crop_pct 0.875): model.json and the README carry
    the transform, and predict.py's probabilities on JPEGs and a PNG of other sizes and aspect ratios
    equal the model in-process on timm's eval transform of the same files."""
    row = pareto_trial(finished_run)
    model = str(row["model"])
    crop = Preprocess(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875, "bicubic", "crop")

    def to_crop(prep: dict) -> None:
        prep["by_model"][model] = {**crop.to_dict(), "transform": crop.describe()}

    run = rewrite_summary(finished_run, tmp_path, to_crop)
    bundle = export_trial(load_run(run), int(row["trial"]), tmp_path / "b")
    card = json.loads((bundle / "model.json").read_text())["preprocessing"]
    assert {**crop.to_dict(), "transform": crop.describe()}.items() <= card.items()
    assert (card["resize_size"], card["image_size"]) == (18, 16)
    assert "BICUBIC" in card["resize"] and "shorter side 18" in card["resize"]
    assert crop.describe() in (bundle / "README.txt").read_text()

    files = images(tmp_path / "images")
    got = predicted(bundle, files, tmp_path)
    np.testing.assert_allclose(got, in_process(bundle, timm_inputs(files, crop)), rtol=0, atol=1e-6)
    # and the crop matters: squashing the same files gives other outputs
    squash = Preprocess(16, crop.mean, crop.std, 1.0, "bicubic", "squash")
    assert np.abs(got - in_process(bundle, timm_inputs(files, squash))).max() > 1e-3


def test_an_old_summary_exports_and_squashes(finished_run, tmp_path):
    """A summary.json from before the transform was recorded (mean and std only): the card says
    squash, bilinear, and predict.py stretches non-square files to S x S."""
    row = pareto_trial(finished_run)

    def to_old(prep: dict) -> None:
        for key in set(prep) - set(OLD_KEYS):
            del prep[key]
        for m, entry in prep["by_model"].items():
            prep["by_model"][m] = {"mean": entry["mean"], "std": entry["std"]}

    run = rewrite_summary(finished_run, tmp_path, to_old)
    bundle = export_trial(load_run(run), int(row["trial"]), tmp_path / "b")
    card = json.loads((bundle / "model.json").read_text())["preprocessing"]
    norm = json.loads((run / "summary.json").read_text())["preprocessing"]["by_model"][str(row["model"])]
    old = Preprocess(16, norm["mean"], norm["std"], 1.0, "bilinear", "squash")
    assert {**old.to_dict(), "transform": old.describe()}.items() <= card.items()
    assert card["resize"] == "Pillow: image.convert('RGB').resize((16, 16), Image.Resampling.BILINEAR)"
    assert old.describe() in (bundle / "README.txt").read_text()

    files = images(tmp_path / "images")
    got = predicted(bundle, files, tmp_path)
    np.testing.assert_allclose(got, in_process(bundle, timm_inputs(files, old)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("where", ["block", "by_model"])
def test_the_models_own_transform_wins(finished_run, tmp_path, where):
    """A model's by_model entry is its transform; without one, the block's (the first model's)."""
    row = pareto_trial(finished_run)
    model = str(row["model"])
    mine = Preprocess(16, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 0.95, "bicubic", "crop")

    def edit(prep: dict) -> None:
        if where == "by_model":
            prep["by_model"][model] = mine.to_dict()
        else:
            prep.update(mine.to_dict())
            del prep["by_model"][model]

    run = rewrite_summary(finished_run, tmp_path, edit)
    bundle = export_trial(load_run(run), int(row["trial"]), tmp_path / "b")
    card = json.loads((bundle / "model.json").read_text())
    assert Preprocess.from_dict(card["preprocessing"]) == mine
