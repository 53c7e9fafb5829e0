"""predict.py's preprocessing (Pillow alone) equals timm's own evaluation transform."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import timm.data
from PIL import Image

from search.outputs.export import PREDICT_SOURCE
from search.task.preprocess import INTERPOLATIONS, Preprocess

#: (width, height, Pillow mode) of the test images: landscape, portrait, square, smaller than S, grey.
SHAPES = [(300, 200, "RGB"), (150, 411, "RGB"), (224, 224, "RGB"), (97, 64, "RGB"), (131, 260, "L")]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def predict() -> ModuleType:
    """The bundle's predict.py, imported from its file (it is no package module)."""
    spec = importlib.util.spec_from_file_location("edgepareto_predict", PREDICT_SOURCE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not {"torch", "timm", "search"} & set(module.__dict__)
    return module


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Each shape as a JPEG and a PNG: smooth gradients plus noise, so resampling filters differ."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = []
    for w, h, mode in SHAPES:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 64 * 4], axis=-1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB").convert(mode)
        for suffix in ("jpg", "png"):
            files.append(root / f"{w}x{h}_{mode}.{suffix}")
            image.save(files[-1])
    return files


def timm_eval(prep: Preprocess):
    """timm's eval transform for ``prep`` (crop: crop_mode center; squash: crop_mode squash, crop_pct 1)."""
    return timm.data.create_transform(
        input_size=(3, prep.img_size, prep.img_size), is_training=False, interpolation=prep.interpolation,
        mean=prep.mean, std=prep.std, crop_pct=prep.crop_pct,
        crop_mode="center" if prep.mode == "crop" else "squash",
    )


def card(prep: Preprocess) -> dict:
    """The "preprocessing" block predict.py reads, as export writes it."""
    return {"preprocessing": {"image_size": prep.img_size, **prep.to_dict(), "transform": prep.describe()}}


def check(predict: ModuleType, images: list[Path], prep: Preprocess) -> None:
    reference = timm_eval(prep)
    for path in images:
        with Image.open(path) as image:
            ours = predict.preprocess(image, card(prep))
            theirs = reference(image.convert("RGB")).numpy()[None]
        assert ours.dtype == np.float32 and ours.shape == (1, 3, prep.img_size, prep.img_size), path.name
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6, err_msg=path.name)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("crop_pct", [0.875, 0.95, 1.0])
@pytest.mark.parametrize("size", [64, 224])
def test_crop_equals_timm_eval_transform(predict, images, size, crop_pct, interpolation):
    check(predict, images, Preprocess(size, MEAN, STD, crop_pct=crop_pct, interpolation=interpolation))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_squash_equals_timm_squash(predict, images, interpolation):
    """Mode squash (the digits, older runs) is timm's squash mode at crop_pct 1: resize to S x S."""
    check(predict, images, Preprocess(16, (0.5,) * 3, (0.5,) * 3, 1.0, interpolation, mode="squash"))


def test_a_card_without_the_transform_squashes_bilinear(predict, images):
    """Bundles exported before the transform was recorded: image_size, mean and std only."""
    old = {"preprocessing": {"image_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3}}
    with Image.open(images[0]) as image:
        expected = timm_eval(Preprocess(16, (0.5,) * 3, (0.5,) * 3, 1.0, "bilinear", "squash"))(image)
        np.testing.assert_allclose(predict.preprocess(image, old), expected.numpy()[None], rtol=0, atol=1e-6)


def test_the_filters_cover_every_interpolation(predict):
    assert set(predict.FILTERS) == set(INTERPOLATIONS)
