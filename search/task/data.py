"""Data: the embedded ``digits`` default or a user's ImageFolder tree, split seeded and stratified.

Images are held in memory as normalised float tensors ``N x 3 x S x S``; normalisation uses the
model's own mean and std (timm's pretrained config), which ``summary.json`` records for deployment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from search.config.bounds import available_memory, check_data_memory
from search.core.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
EMBEDDED = ("digits",)
#: Images in scikit-learn's ``load_digits``.
DIGITS_IMAGES = 1797


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """Train/val/test splits plus what identifies the data (for the baseline cache)."""

    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    fingerprint: str
    unreadable: tuple[Path, ...] = ()  # image files Pillow could not read, skipped

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def skipped(self) -> int:
        return len(self.unreadable)


def image_count(spec: str) -> int:
    """How many images ``load_dataset(spec, ...)`` would read, counted without reading any (0 for a
    folder that does not exist: ``load_dataset`` says what is wrong with it)."""
    if spec == "digits":
        return DIGITS_IMAGES
    root = Path(spec)
    if not root.is_dir():
        return 0
    return sum(len(_image_files(d)) for d in _class_dirs(root))


def check_memory(spec: str, img_size: int, datasets: int = 1) -> None:
    """``UserError`` naming ``img_size`` when ``datasets`` copies of the data at ``img_size`` would not
    fit in this machine's available memory: checked before any data is read."""
    check_data_memory(image_count(spec), img_size, available_memory(), datasets)


def load_dataset(
    spec: str,
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> Dataset:
    """``digits`` or the path of an ImageFolder tree."""
    if spec == "digits":
        images, labels, classes, fingerprint, unreadable = _digits()
    else:
        images, labels, classes, fingerprint, unreadable = _image_folder(Path(spec), img_size)
    x = _normalise(_resize(images, img_size), mean, std)
    y = torch.as_tensor(labels, dtype=torch.long)
    train, val, test = _split(x, y, seed, val_fraction, test_fraction)
    norm = ",".join(f"{v:g}" for v in (*mean, *std))
    fingerprint = f"{fingerprint}-s{img_size}-seed{seed}-v{val_fraction}-t{test_fraction}-n{norm}"
    return Dataset(train, val, test, classes, fingerprint, unreadable)


def _digits() -> tuple[torch.Tensor, np.ndarray, tuple[str, ...], str, tuple[Path, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    return images.repeat(1, 3, 1, 1), bunch.target, tuple(map(str, range(10))), "digits", ()


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _image_folder(root: Path, img_size: int):
    if not root.exists():
        raise UserError(f"data path {root} does not exist")
    if not root.is_dir():
        raise UserError(f"data path {root} is not a folder (expected an ImageFolder tree)")
    class_dirs = _class_dirs(root)
    if len(class_dirs) < 2:
        raise UserError(
            f"{root} is not an ImageFolder tree: it needs one sub-folder per class (found "
            f"{len(class_dirs)})"
        )
    arrays, labels, unreadable = [], [], []
    digest = hashlib.sha256()
    for label, class_dir in enumerate(class_dirs):
        files = _image_files(class_dir)
        if not files:
            raise UserError(f"class folder {class_dir} has no images")
        readable = 0
        for f in files:
            try:
                with Image.open(f) as im:
                    rgb = im.convert("RGB").resize((img_size, img_size), Image.Resampling.BILINEAR)
                    arrays.append(np.asarray(rgb, dtype=np.float32) / 255.0)
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
                unreadable.append(f)
                continue
            readable += 1
            labels.append(label)
            stat = f.stat()
            digest.update(f"{f.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        if not readable:
            raise UserError(f"class folder {class_dir} has no readable images")
    images = torch.as_tensor(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    classes = tuple(d.name for d in class_dirs)
    return images, np.asarray(labels), classes, f"folder-{digest.hexdigest()[:16]}", tuple(unreadable)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.as_tensor(std, dtype=torch.float32)[None, :, None, None]
    return ((images - m) / s).contiguous()


def _split(x: torch.Tensor, y: torch.Tensor, seed: int, val_fraction: float, test_fraction: float):
    idx = np.arange(len(y))
    labels = y.numpy()
    try:
        rest, test = train_test_split(
            idx, test_size=test_fraction, random_state=seed, stratify=labels
        )
        train, val = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
            stratify=labels[rest],
        )
    except ValueError as exc:
        raise UserError(f"cannot split the data into train/val/test: {exc}") from None
    return tuple(Split(x[i], y[i]) for i in (np.sort(train), np.sort(val), np.sort(test)))
