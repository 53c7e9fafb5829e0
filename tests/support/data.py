"""Small image data for tests: an ImageFolder tree of random images, quick to train on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image_folder(
    root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 6, size: int = 12
) -> Path:
    """``root/<class>/<i>.png``: ``per_class`` random RGB images of ``size`` px per class (seeded)."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root
