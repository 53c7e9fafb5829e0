"""The evaluation transform: what a deployed model's input goes through, as a record.

It is timm's eval transform (``timm.data.create_transform(is_training=False)``): the shorter side
resized to ``floor(img_size / crop_pct)`` with the model's interpolation, a centre crop of
``img_size``, scaled to [0, 1], then ``(x - mean) / std``. The embedded digits (8x8 images) are
instead stretched to ``img_size`` x ``img_size`` (``mode="squash"``, crop_pct 1). ``summary.json``
and each bundle's ``model.json`` carry ``to_dict()``; ``predict.py`` applies it with Pillow alone.
No torch here: reading a finished run must not import it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MODES = ("crop", "squash")
#: The embedded digits' transform (and every run's before the transform was recorded): stretched to
#: ``img_size`` x ``img_size``, bilinear, nothing cropped. ``Preprocess(size, mean, std, **SQUASH)``.
SQUASH = {"crop_pct": 1.0, "interpolation": "bilinear", "mode": "squash"}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side) and centre crop by ``crop_pct``, or squash; then normalise."""

    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mode: str = "crop"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.mode not in MODES:
            raise ValueError(f"preprocess mode must be one of {MODES}, got {self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must lie in (0, 1], got {self.crop_pct}")

    @property
    def resize_size(self) -> int:
        """The shorter side after resizing (timm: ``floor(img_size / crop_pct)``)."""
        return self.img_size if self.mode == "squash" else math.floor(self.img_size / self.crop_pct)

    def describe(self) -> str:
        """One line for the model card and README: what happens to an image."""
        norm = f"scaled to [0, 1], (x - mean) / std with mean {_fmt(self.mean)}, std {_fmt(self.std)}"
        if self.mode == "squash":
            return f"RGB, resized to {self.img_size}x{self.img_size} ({self.interpolation}), {norm}"
        return (
            f"RGB, shorter side resized to {self.resize_size} ({self.interpolation}), centre crop "
            f"{self.img_size}x{self.img_size} (crop_pct {self.crop_pct:g}), {norm}"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(mean=list(self.mean), std=list(self.std), resize_size=self.resize_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        keys = ("img_size", "mean", "std", "crop_pct", "interpolation", "mode")
        return cls(**{k: data[k] for k in keys if k in data})


def resized_shape(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``shorter`` and the aspect kept, truncated as
    torchvision's ``Resize(int)`` does."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def centre_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a centred ``size`` crop, rounded as torchvision's
    ``CenterCrop`` does."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
