"""Data: the embedded ``digits`` default, or a user's ImageFolder tree streamed from disk.

The digits (1,797 8x8 images) are held in memory as normalised float tensors (``TensorSplit``). An
ImageFolder tree is indexed (paths and labels, plus a header check of every file) and read lazily:
``FolderSplit`` decodes each batch in DataLoader worker processes through timm's transforms
(``timm.data.create_transform``: the model's evaluation transform, or its training transform with
``--augment``). Nothing holds the data set as tensors, so memory does not grow with the number of
images beyond the index. Splits are seeded and stratified.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import timm
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from search.config.bounds import available_memory, check_data_memory
from search.core.errors import CandidateError, UserError
from search.task.preprocess import SQUASH, Preprocess
from spaces.data import Split, TensorSplit, order_of

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
EMBEDDED = ("digits",)
#: Images in scikit-learn's ``load_digits``.
DIGITS_IMAGES = 1797
#: What a file that fails to decode raises (Pillow, truncated or corrupt data): skipped and counted.
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
#: What a file that is gone raises: its folder became unreadable, which fails the trial.
MISSING_ERRORS = (FileNotFoundError, NotADirectoryError, PermissionError)
#: Training augmentation per ``--augment``: timm's train transform settings (random resized crop
#: scale, horizontal flip, colour jitter, RandAugment policy, random-erasing probability).
AUGMENTS: dict[str, dict[str, Any]] = {
    "light": {"scale": (0.35, 1.0), "hflip": 0.5, "color_jitter": 0.0, "auto_augment": None, "re_prob": 0.0},
    "strong": {
        "scale": (0.08, 1.0), "hflip": 0.5, "color_jitter": 0.4,
        "auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25,
    },
}
#: ``--augment shift``, the embedded digits' augmentation (in memory, ``spaces.data.shifted``): a
#: random translation by up to this share of the input size each way (1/8: one of the 8 px digits'
#: pixels). It took mobilenetv3_large_100 at 64 px from 92.8% to 97.8% test accuracy (README).
SHIFT_SHARE = 1 / 8
#: What ``--augment`` the embedded digits accept.
EMBEDDED_AUGMENTS = ("none", "shift")
#: Paths a warning about images skipped mid-run names.
NAMED_SKIPPED = 3


def default_workers(cpus: int | None = None) -> int:
    """DataLoader worker processes when ``--workers`` is not given: half the cores, 1 to 8."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


def default_augment(spec: str, embedded: str = "none") -> str:
    """``light`` for an ImageFolder; ``embedded`` (the model family's choice) for the digits."""
    return embedded if spec in EMBEDDED else "light"


@dataclass(eq=False)
class SkipLog:
    """Images that failed to decode while a split was read (mid-epoch): counted, never fatal."""

    paths: list[str] = field(default_factory=list)
    reported: int = 0  # how many of ``paths`` a warning has named so far

    def add(self, paths: list[str]) -> None:
        self.paths.extend(p for p in paths if p not in self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def message(self, since: int = 0) -> str | None:
        """``skipped 3 corrupt image(s) while reading: a.jpg, b.jpg, ...``, for the paths added
        after the first ``since``; None when there are none."""
        new = self.paths[since:]
        if not new:
            return None
        more = ", ..." if len(new) > NAMED_SKIPPED else ""
        return (
            f"skipped {len(new)} corrupt or truncated image(s) while reading the data: "
            f"{', '.join(new[:NAMED_SKIPPED])}{more}"
        )

    def unreported(self) -> str | None:
        """``message`` for the paths no warning has covered yet, which are then covered."""
        text = self.message(since=self.reported)
        self.reported = len(self.paths)
        return text


class _Files(TorchDataset):
    """Index -> (image tensor, label, status): status "" read, "corrupt" or "missing" with the path."""

    def __init__(self, root: Path, files: tuple[str, ...], labels: np.ndarray, transform: Callable) -> None:
        self.root, self.files, self.labels, self.transform = root, files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str, str]:
        path = self.root / self.files[i]
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            return self.transform(rgb), int(self.labels[i]), "", self.files[i]
        except MISSING_ERRORS:
            return None, int(self.labels[i]), "missing", str(path)
        except DECODE_ERRORS:
            return None, int(self.labels[i]), "corrupt", self.files[i]


def _collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor, list[str], list[str]]:
    good = [(x, y) for x, y, status, _ in items if not status]
    corrupt = [p for _, _, status, p in items if status == "corrupt"]
    missing = [p for _, _, status, p in items if status == "missing"]
    x = torch.stack([g[0] for g in good]) if good else None
    return x, torch.as_tensor([g[1] for g in good], dtype=torch.long), corrupt, missing


@dataclass(frozen=True, eq=False)
class FolderSplit(Split):
    """Images of an ImageFolder tree, decoded batch by batch in DataLoader worker processes."""

    root: Path
    files: tuple[str, ...]  # relative to root
    label_array: np.ndarray
    preprocess: Preprocess  # the evaluation transform; the training one adds ``augment``
    augment: str
    workers: int
    skipped: SkipLog
    eval_transform: Callable = field(init=False, repr=False)
    train_transform: Callable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eval_transform", eval_transform(self.preprocess))
        object.__setattr__(self, "train_transform", train_transform(self.preprocess, self.augment))

    @property
    def labels(self) -> np.ndarray:
        return self.label_array

    def batches(
        self, batch_size: int, *, shuffle_seed: int | None = None, augment: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = order_of(len(self.files), shuffle_seed)[:limit].tolist()
        if not order:
            return
        transform = self.train_transform if augment else self.eval_transform
        dataset = _Files(self.root, self.files, self.label_array, transform)
        # A worker costs more to start than a batch or two is worth, except for augmentation: a
        # worker's random transforms are seeded by the loader's generator, the main process's are not.
        few = len(order) <= 2 * batch_size and not augment
        workers = 0 if few else self.workers
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=order, num_workers=workers, collate_fn=_collate,
            pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None,
            generator=torch.Generator().manual_seed(0 if shuffle_seed is None else shuffle_seed),
        )
        for x, y, corrupt, missing in loader:
            if missing:
                path = Path(missing[0])
                gone = not path.parent.is_dir()
                what = f"folder {path.parent} is gone" if gone else f"{path} cannot be read"
                raise CandidateError(f"the data became unreadable mid-run: {what}")
            if corrupt:
                self.skipped.add(corrupt)
            if x is not None:
                yield x, y

    def subset(self, n: int) -> Split:
        return replace(self, files=self.files[:n], label_array=self.label_array[:n])

    @property
    def size(self) -> int:
        return self.preprocess.img_size

    def at_size(self, size: int) -> Split:
        """The same files through the same transforms at ``size`` (timm's: resize to
        ``floor(size / crop_pct)``, centre crop ``size``): what ``predict.py`` does at that size."""
        if size == self.size:
            return self
        return replace(self, preprocess=replace(self.preprocess, img_size=size))


@dataclass(frozen=True)
class Dataset:
    """Train/val/test splits plus what identifies the data (for the baseline cache)."""

    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    fingerprint: str
    unreadable: tuple[Path, ...] = ()  # image files Pillow could not open when indexing, skipped
    preprocess: Preprocess | None = None  # the evaluation transform (summary.json, predict.py)
    augment: str = "none"
    corrupt: SkipLog = field(default_factory=SkipLog, compare=False)  # images that failed to decode mid-run

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def img_size(self) -> int:
        """The input size the images are transformed to."""
        if self.preprocess is None:
            return int(self.train.images(1).shape[-1])
        return self.preprocess.img_size

    @property
    def skipped(self) -> int:
        """Image files left out when indexing (Pillow could not open them)."""
        return len(self.unreadable)

    @property
    def streamed(self) -> bool:
        """Whether images are read from disk batch by batch (an ImageFolder) rather than held."""
        return isinstance(self.train, FolderSplit)


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
    """``UserError`` naming ``img_size`` when ``datasets`` in-memory copies of the data at ``img_size``
    would not fit in this machine's available memory: checked before any data is read. Only the
    embedded data is held in memory; an ImageFolder is streamed."""
    if spec in EMBEDDED:
        check_data_memory(image_count(spec), img_size, available_memory(), datasets)


def model_preprocess(name: str, img_size: int, spec: str) -> Preprocess:
    """The evaluation transform for model ``name`` on data ``spec``: timm's pretrained config gives
    mean, std, interpolation and crop_pct (``timm.data.resolve_data_config``); the embedded digits
    are stretched to ``img_size`` (mode squash, bilinear, as they always were)."""
    pretrained = timm.get_pretrained_cfg(name)
    cfg = timm.data.resolve_data_config(pretrained_cfg=pretrained.to_dict()) if pretrained else {}
    mean = tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
    std = tuple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
    if spec in EMBEDDED:
        return Preprocess(img_size, mean, std, **SQUASH)
    interpolation = cfg.get("interpolation", "bilinear")
    crop_pct = float(cfg.get("crop_pct", timm.data.DEFAULT_CROP_PCT))
    return Preprocess(img_size, mean, std, crop_pct=crop_pct, interpolation=interpolation, mode="crop")


def eval_transform(preprocess: Preprocess) -> Callable:
    """timm's evaluation transform for ``preprocess`` (PIL image -> normalised 3 x S x S tensor)."""
    return timm.data.create_transform(
        input_size=(3, preprocess.img_size, preprocess.img_size), is_training=False,
        interpolation=preprocess.interpolation, mean=preprocess.mean, std=preprocess.std,
        crop_pct=preprocess.crop_pct, crop_mode="center" if preprocess.mode == "crop" else "squash",
    )


def train_transform(preprocess: Preprocess, augment: str) -> Callable:
    """timm's training transform with the ``AUGMENTS[augment]`` settings (``none``: the eval one)."""
    if augment == "none":
        return eval_transform(preprocess)
    settings = AUGMENTS[augment]
    return timm.data.create_transform(
        input_size=(3, preprocess.img_size, preprocess.img_size), is_training=True,
        interpolation=preprocess.interpolation, mean=preprocess.mean, std=preprocess.std,
        scale=settings["scale"], hflip=settings["hflip"],
        color_jitter=settings["color_jitter"] or None, auto_augment=settings["auto_augment"],
        re_prob=settings["re_prob"],
    )


def load_dataset(
    spec: str,
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    *,
    preprocess: Preprocess | None = None,
    augment: str | None = None,
    workers: int | None = None,
) -> Dataset:
    """``digits`` (in memory) or the path of an ImageFolder tree (indexed, then streamed).

    ``preprocess`` is the evaluation transform (None: squash for the digits, else a centre crop of
    timm's default ``crop_pct`` with ``mean`` and ``std``); ``augment`` the training augmentation
    (None: ``default_augment``); ``workers`` the DataLoader processes (None: ``default_workers``).
    """
    augment = augment or default_augment(spec)
    if preprocess is None:
        crop = {"crop_pct": timm.data.DEFAULT_CROP_PCT, "interpolation": "bilinear", "mode": "crop"}
        preprocess = Preprocess(img_size, mean, std, **(SQUASH if spec in EMBEDDED else crop))
    split_key = f"seed{seed}-v{val_fraction}-t{test_fraction}"
    prep_key = hashlib.sha256(repr(sorted(preprocess.to_dict().items())).encode()).hexdigest()[:12]
    if spec in EMBEDDED:
        if augment not in EMBEDDED_AUGMENTS:
            raise UserError(
                f"--augment {augment} applies to ImageFolder data; the embedded digits take "
                "--augment none or shift", field="augment",
            )
        images, labels = _digits()
        x = _normalise(_resize(images, img_size), preprocess.mean, preprocess.std)
        y = torch.as_tensor(labels, dtype=torch.long)
        parts = _split_indices(labels, seed, val_fraction, test_fraction, ())
        shift = round(img_size * SHIFT_SHARE) if augment == "shift" else 0
        train, val, test = (TensorSplit(x[i], y[i], shift) for i in parts)
        classes = tuple(map(str, range(10)))
        norm = ",".join(f"{v:g}" for v in (*preprocess.mean, *preprocess.std))
        augmented = "" if augment == "none" else f"-a{augment}"  # caches from before shift stay valid
        fingerprint = f"digits-s{img_size}-{split_key}-n{norm}{augmented}"
        return Dataset(train, val, test, classes, fingerprint, (), preprocess, augment)
    if augment == "shift":
        raise UserError(
            "--augment shift is the embedded digits' augmentation; ImageFolder data take none, light "
            "or strong", field="augment",
        )
    root = Path(spec)
    files, labels, classes, digest, unreadable = _index(root)
    parts = _split_indices(labels, seed, val_fraction, test_fraction, classes)
    skipped = SkipLog()
    workers = default_workers() if workers is None else workers
    train, val, test = (
        FolderSplit(root, tuple(files[j] for j in i), labels[i], preprocess, augment, workers, skipped)
        for i in parts
    )
    fingerprint = f"folder-{digest}-s{img_size}-{split_key}-p{prep_key}-a{augment}"
    return Dataset(train, val, test, classes, fingerprint, unreadable, preprocess, augment, skipped)


def _digits() -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    return images.repeat(1, 3, 1, 1), np.asarray(bunch.target)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _index(root: Path) -> tuple[list[str], np.ndarray, tuple[str, ...], str, tuple[Path, ...]]:
    """Every image file of the tree (relative path, label), each opened once to read its header
    (not decoded): files Pillow cannot identify are left out and returned as unreadable."""
    if not root.exists():
        raise UserError(f"data path {root} does not exist")
    if not root.is_dir():
        raise UserError(f"data path {root} is not a folder (expected an ImageFolder tree)")
    class_dirs = _class_dirs(root)
    if len(class_dirs) < 2:
        raise UserError(
            f"{root} is not an ImageFolder tree: it needs one sub-folder per class, at least two "
            f"(found {len(class_dirs)})"
        )
    files, labels, unreadable = [], [], []
    digest = hashlib.sha256()
    for label, class_dir in enumerate(class_dirs):
        found = _image_files(class_dir)
        if not found:
            raise UserError(f"class folder {class_dir} has no images")
        readable = 0
        for f in found:
            try:
                with Image.open(f) as im:
                    im.size  # noqa: B018 -- the header is parsed on open; nothing is decoded
            except DECODE_ERRORS:
                unreadable.append(f)
                continue
            readable += 1
            rel = str(f.relative_to(root))
            files.append(rel)
            labels.append(label)
            stat = f.stat()
            digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        if not readable:
            raise UserError(f"class folder {class_dir} has no readable images")
    classes = tuple(d.name for d in class_dirs)
    return files, np.asarray(labels, dtype=np.int64), classes, digest.hexdigest()[:16], tuple(unreadable)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=torch.float32)[None, :, None, None]
    s = torch.as_tensor(std, dtype=torch.float32)[None, :, None, None]
    return ((images - m) / s).contiguous()


def min_per_class(val_fraction: float, test_fraction: float) -> int:
    """The fewest images a class needs so that each of train, val and test gets at least one."""
    return max(3, math.ceil(1 / min(val_fraction, test_fraction)))


def _split_indices(
    labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float, classes: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded train/val/test index arrays (each sorted); one clear line for a class too
    small to split, before any training."""
    counts = np.bincount(labels)
    need = min_per_class(val_fraction, test_fraction)
    small = int(np.argmin(counts))
    if counts[small] < need and classes:
        raise UserError(
            f"class {classes[small]!r} has {counts[small]} image(s); the train/val/test split "
            f"(val {val_fraction:g}, test {test_fraction:g}) needs at least {need} per class"
        )
    idx = np.arange(len(labels))
    try:
        rest, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
        train, val = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=labels[rest],
        )
    except ValueError as exc:
        raise UserError(f"cannot split the data into train/val/test: {exc}") from None
    return np.sort(train), np.sort(val), np.sort(test)
