#!/usr/bin/env python3
"""Classify images with the ONNX model next to this script (an edgepareto bundle).

On the board (or any machine with Python 3)::

    pip install onnxruntime numpy pillow
    python predict.py photo.jpg [more.png ...] [--top 3] [--json]

Needs only onnxruntime, numpy and Pillow. ``model.json`` beside this file gives the input size,
class names and the evaluation transform ("preprocessing"), which this script applies exactly as
timm's eval transform (torchvision on a PIL image) does: Pillow ``convert("RGB")``; in mode
``crop``, ``resize`` so the shorter side is ``resize_size`` (``floor(S / crop_pct)``, the other side
truncated) with the recorded interpolation, then the centre S x S box (offsets rounded); in mode
``squash`` (the embedded digits, and runs from before the crop mode), ``resize((S, S))``. Then
scaled to [0, 1], ``(x - mean) / std`` per channel, NCHW float32. A ``.npy`` file may hold an
image array (H x W x 3 or H x W, uint8: preprocessed like an image) or an already preprocessed
float array (N x 3 x S x S or 3 x S x S: used as it is).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = Path(__file__).resolve().parent
_FILTERS = getattr(Image, "Resampling", Image)  # Pillow < 9.1 has no Image.Resampling
#: The card's interpolation names as Pillow filters (torchvision maps its modes to the same ones).
FILTERS = {
    "nearest": _FILTERS.NEAREST, "bilinear": _FILTERS.BILINEAR, "bicubic": _FILTERS.BICUBIC,
    "lanczos": _FILTERS.LANCZOS, "box": _FILTERS.BOX, "hamming": _FILTERS.HAMMING,
}


def transform(image: Image.Image, prep: dict) -> Image.Image:
    """The card's resize and crop: an RGB image of S x S. A card without ``mode`` (older bundles)
    squashes with bilinear, as those runs did."""
    size = int(prep.get("img_size") or prep["image_size"])
    resample = FILTERS[prep.get("interpolation", "bilinear")]
    rgb = image.convert("RGB")
    if prep.get("mode", "squash") == "squash":
        return rgb.resize((size, size), resample)
    shorter = int(prep["resize_size"])
    width, height = rgb.size
    if width <= height:  # torchvision's Resize(int): the longer side truncated
        new = (shorter, int(shorter * height / width))
    else:
        new = (int(shorter * width / height), shorter)
    if new != rgb.size:
        rgb = rgb.resize(new, resample)
    left = int(round((new[0] - size) / 2.0))  # torchvision's CenterCrop
    top = int(round((new[1] - size) / 2.0))
    return rgb.crop((left, top, left + size, top + size))


def preprocess(image: Image.Image, card: dict) -> np.ndarray:
    """One image as a 1 x 3 x S x S float32 array, by the card's evaluation transform."""
    prep = card["preprocessing"]
    x = np.asarray(transform(image, prep), dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(prep["mean"], dtype=np.float32)) / np.asarray(prep["std"], dtype=np.float32)
    return x.transpose(2, 0, 1)[None].copy()


def load(path: Path, card: dict) -> np.ndarray:
    """An image file or a ``.npy`` array, as an N x 3 x S x S float32 batch."""
    if path.suffix.lower() != ".npy":
        with Image.open(path) as image:
            return preprocess(image, card)
    array = np.load(path)
    if array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        return preprocess(Image.fromarray(array), card)
    expected = tuple(card["input"]["shape"][1:])
    batch = array[None] if array.ndim == 3 else array
    if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
        raise ValueError(
            f"expected a uint8 H x W x 3 image or a preprocessed N x {' x '.join(map(str, expected))} "
            f"array, got {array.dtype} {array.shape}"
        )
    return batch.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files (jpg, png, ...) or .npy arrays")
    parser.add_argument("--top", type=int, default=1, metavar="K", help="print the K best classes")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    args = parser.parse_args(argv)
    card = json.loads((HERE / "model.json").read_text())
    classes = card["classes"]
    session = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    results = []
    for path in args.images:
        try:
            batch = load(path, card)
        except (OSError, ValueError) as exc:
            print(f"predict.py: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        probs = softmax(session.run(None, {card["input"]["name"]: batch})[0])
        for i, p in enumerate(probs):
            best = np.argsort(-p, kind="stable")[: max(1, args.top)]
            name = str(path) if len(probs) == 1 else f"{path}[{i}]"
            top = [{"class": classes[k], "index": int(k), "probability": float(p[k])} for k in best]
            results.append({"image": name, "top": top})
            if not args.json:
                print(f"{name}: " + ", ".join(f"{t['class']} {t['probability']:.4f}" for t in top))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
