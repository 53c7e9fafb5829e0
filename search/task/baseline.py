"""Task: the base model and the data splits, with the trained baseline cached under ``runs/``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.config.run_config import RunConfig
from search.core.atomic import write_json, write_text, write_with
from search.core.errors import UserError
from search.core.layout import UNREADABLE_FILE
from search.core.paths import is_file_reference
from search.task import models
from search.task.data import (
    Dataset,
    check_memory,
    default_augment,
    default_workers,
    load_dataset,
    model_preprocess,
)
from search.task.families import Training, family_of, img_size_for
from search.task.preprocess import Preprocess
from spaces import Context
from spaces.train import accuracy, fit
from targets.slot import checkpoint as slot_checkpoint

CACHE_DIR = ".cache/baselines"
#: Unreadable images a warning names; the run folder's ``unreadable_images.txt`` lists them all.
NAMED_UNREADABLE = 3


@dataclass(frozen=True)
class Task:
    """What every trial of one base model starts from: the model, its data, its teacher."""

    base: nn.Module
    data: Dataset
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_name: str = ""
    teacher: nn.Module | None = None  # None: the base model teaches
    teacher_name: str = "base"
    finetune_lr: float = 2e-3
    preprocess: Preprocess | None = None  # the evaluation transform (None: data.preprocess)
    #: Epochs the baseline trained for (its recipe; 0: used as loaded): the full recovery budget of
    #: successive halving (``--fidelity halving``).
    training_epochs: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.img_size, self.img_size)


def task_context(task: Task, cfg: RunConfig, **extra: Any) -> Context:
    """What a candidate's torch steps of ``task`` get: its training split, its teacher (the base
    model unless ``--teacher``), ``cfg``'s seed and batch size, the recovery rate; ``extra`` sets
    the other fields (progress callback, checkpoint hook)."""
    return Context(
        train=task.data.train, teacher=task.base if task.teacher is None else task.teacher,
        seed=cfg.seed, batch_size=cfg.batch_size, lr=task.finetune_lr, **extra,
    )


def check_names(cfg: RunConfig) -> None:
    """Fail fast, before any data is read, on an unknown model or teacher name."""
    for name in cfg.models:
        models.check_model_name(name)
    if cfg.teacher != "base":
        if not is_file_reference(cfg.teacher):
            models.check_model_name(cfg.teacher)
        elif not Path(cfg.teacher).is_file():
            raise UserError(f"teacher checkpoint {cfg.teacher} does not exist")


def check_inputs(cfg: RunConfig) -> None:
    """Fail fast, before any data is read: model and teacher names, and whether the data set fits in
    memory at each model's input size (one copy per base model)."""
    check_names(cfg)
    sizes = {name: img_size_for(name, cfg.img_size) for name in cfg.models}
    for name, size in sizes.items():
        if cfg.patch_size is not None and family_of(name).kind == "vit" and size % cfg.patch_size:
            raise UserError(
                f"--patch-size {cfg.patch_size} does not divide {name}'s input size {size} "
                "(--img-size, else the family's: edgepareto models)", field="patch_size",
            )
    check_memory(cfg.data, max(sizes.values()), datasets=len(cfg.models))


def prepare_all(
    cfg: RunConfig, runs_root: Path, log: Callable[[str], None], warn: Callable[[str], None]
) -> dict[str, Task]:
    """One task per base model, in the order given (the entry points ran ``check_inputs`` first)."""
    return {name: prepare(cfg, name, runs_root, log, warn) for name in cfg.models}


def prepare(
    cfg: RunConfig, name: str, runs_root: Path, log: Callable[[str], None],
    warn: Callable[[str], None],
) -> Task:
    """Validate model and data, then the baseline: trained from scratch, or fine-tuned from timm's
    pretrained weights or a checkpoint (cached either way), and the teacher. Unreadable images are
    skipped with a warning naming the first few (``unreadable_warning``). The input size is
    ``--img-size``, else the model family's (``search.task.families``)."""
    img_size = img_size_for(name, cfg.img_size)
    preprocess = model_preprocess(name, img_size, cfg.data)
    data = load_dataset(
        cfg.data, img_size, preprocess.mean, preprocess.std, cfg.seed, cfg.val_fraction,
        cfg.test_fraction, preprocess=preprocess, workers=loader_workers(cfg),
        augment=augment_for(cfg, name),
    )
    if data.unreadable:
        listing = Path(runs_root) / str(cfg.name) / UNREADABLE_FILE
        warn(unreadable_warning(data.unreadable, cfg.data, listing))
    torch.manual_seed(cfg.seed)  # the baseline's initial weights are seeded too
    model = models.create(name, data.num_classes, img_size, cfg.patch_size, pretrained=cfg.pretrained)
    start, source = ("pretrained", f"timm:{name}") if cfg.pretrained else ("scratch", "")
    if cfg.checkpoint:
        loaded = models.load_checkpoint(model, cfg.checkpoint, warn)
        model = loaded.model
        _check_outputs(model, data, cfg.checkpoint)
        start = "pretrained" if loaded.head_reset else "checkpoint"
        source = f"checkpoint:{_file_digest(Path(cfg.checkpoint))}"
    training = models.training_for(name, model, cfg.epochs, cfg.lr, cfg.finetune_lr, start)
    if start == "scratch" or training.epochs > 0:
        model = cached_baseline(model, name, cfg, data, runs_root, log, training=training, source=source)
    teacher = load_teacher(cfg, name, data, runs_root, log)
    return Task(
        model.eval(), data, img_size, preprocess.mean, preprocess.std, name, teacher, cfg.teacher,
        training.finetune_lr, preprocess, training_epochs=training.epochs,
    )


def augment_for(cfg: RunConfig, name: str) -> str:
    """``--augment``, else ``light`` for an ImageFolder and the model family's choice for the digits
    (``Family.embedded_augment``)."""
    return cfg.augment or default_augment(cfg.data, family_of(name).embedded_augment)


def loader_workers(cfg: RunConfig) -> int:
    """``--workers``, else half the CPUs a trial may use (``--cpus-per-trial``; Ray's default is one
    CPU per trial), so that parallel trials do not each start half the machine's cores."""
    if cfg.workers is not None:
        return cfg.workers
    cpus = cfg.cpus_per_trial or (1 if cfg.backend == "ray" else None)
    return default_workers(cpus)


def _file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's sha256 (a checkpoint's identity in the cache key)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def unreadable_images(tasks: Mapping[str, Task]) -> tuple[Path, ...]:
    """The image files the tasks' data skipped as unreadable, each once, in order."""
    return tuple(dict.fromkeys(p for task in tasks.values() for p in task.data.unreadable))


def unreadable_warning(paths: Sequence[Path], data: str, listing: Path) -> str:
    """``skipped 5 unreadable image(s) in DATA: a/x.png, b/y.jpg, b/z.gif, ... (all in LISTING)``:
    the first ``NAMED_UNREADABLE`` named relative to the data folder."""
    named = [_relative(p, Path(data)) for p in paths[:NAMED_UNREADABLE]]
    more = ", ..." if len(paths) > NAMED_UNREADABLE else ""
    return (
        f"skipped {len(paths)} unreadable image(s) in {data}: {', '.join(named)}{more} "
        f"(all listed in {listing})"
    )


def write_unreadable(run_dir: Path, tasks: Mapping[str, Task]) -> Path | None:
    """The run folder's ``unreadable_images.txt``, one skipped file a line; None when none was."""
    skipped = unreadable_images(tasks)
    if not skipped:
        return None
    return write_text(Path(run_dir) / UNREADABLE_FILE, "".join(f"{p}\n" for p in skipped))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def load_teacher(
    cfg: RunConfig, student: str, data: Dataset, runs_root: Path, log: Callable[[str], None]
) -> nn.Module | None:
    """``base``: None (the uncompressed student teaches). A file: a whole saved model, or a
    state_dict of the student's architecture. A timm name: that model trained on the same data
    (cached like a baseline), e.g. a CNN teaching a ViT as in DeiT."""
    if cfg.teacher == "base":
        return None
    img_size = data.img_size  # the student's
    if is_file_reference(cfg.teacher):  # a file (checked by check_names), never a name found on disk
        torch.manual_seed(cfg.seed)
        shell = models.create(student, data.num_classes, img_size, cfg.patch_size)
        loaded = models.load_checkpoint(shell, cfg.teacher)
        if loaded.head_reset:
            raise UserError(
                f"teacher checkpoint {cfg.teacher} has no classifier for the data's {data.num_classes} "
                "classes: a teacher must be trained on this data"
            )
        teacher = loaded.model
        _check_outputs(teacher, data, cfg.teacher)
        log(f"teacher: {cfg.teacher}")
        return teacher.eval()
    torch.manual_seed(cfg.seed)
    teacher = models.create(cfg.teacher, data.num_classes, img_size, pretrained=cfg.pretrained)
    start, source = ("pretrained", f"timm:{cfg.teacher}") if cfg.pretrained else ("scratch", "")
    training = models.training_for(cfg.teacher, teacher, cfg.epochs, cfg.lr, cfg.finetune_lr, start)
    return cached_baseline(
        teacher, cfg.teacher, cfg, data, runs_root, log, role="teacher", training=training, source=source
    )


def baseline_key(
    cfg: RunConfig, name: str, data: Dataset, training: Training, source: str = ""
) -> str:
    """What decides the trained weights: model, data (its fingerprint includes the input size, the
    transforms and the augmentation), training settings, and the starting weights (``source``: empty
    from scratch, ``timm:NAME`` for timm's pretrained ones, ``checkpoint:SHA`` for a file). Warm-up
    and label smoothing enter the key only where they differ from the first defaults (0.3, 0), so
    that baselines cached before they existed stay valid."""
    key = {
        "model": name, "data": data.fingerprint, "classes": data.num_classes,
        "img_size": data.img_size, "epochs": training.epochs,
        "batch_size": cfg.batch_size, "lr": training.lr, "seed": cfg.seed,
        "torch": torch.__version__.split("+")[0], "patch_size": cfg.patch_size,
    }
    if source:
        key["source"] = source
    if (training.warmup, training.label_smoothing) != (Training.warmup, Training.label_smoothing):
        key["warmup"], key["label_smoothing"] = training.warmup, training.label_smoothing
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{name}-{digest}"


def cached_baseline(
    model: nn.Module, name: str, cfg: RunConfig, data: Dataset, runs_root: Path,
    log: Callable[[str], None], role: str = "baseline", training: Training | None = None,
    source: str = "",
) -> nn.Module:
    """``model`` trained on the data (from its current weights) for ``training``'s epochs, or the
    cached result of the same training."""
    training = training or models.training_for(name, model, cfg.epochs, cfg.lr, cfg.finetune_lr)
    epochs, lr = training.epochs, training.lr
    folder = runs_root / CACHE_DIR / baseline_key(cfg, name, data, training, source)
    weights = folder / "model.pt"
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        log(f"{role}: cached {weights}")
        return model.eval()
    what = f"fine-tuning {name} from {source}" if source else f"training {name}"
    log(f"{role}: {what} for {epochs} epochs (lr {lr:g}, seed {cfg.seed}); cached after")
    fit(
        model, data.train, epochs=epochs, lr=lr, warmup=training.warmup,
        label_smoothing=training.label_smoothing, batch_size=cfg.batch_size, seed=cfg.seed,
        on_epoch=lambda e, loss, rate: log(
            f"{role}: {name} epoch {e}/{epochs} loss {loss:.4f} ({rate:,.0f} images/s)"
        ),
        checkpoint=slot_checkpoint,
    )
    val_acc = accuracy(model, data.val)
    write_with(weights, lambda tmp: torch.save(model.state_dict(), tmp))
    write_json(folder / "meta.json", {"model": name, "config": cfg.to_dict(), "val_accuracy_torch": val_acc})
    log(f"{role}: {name} val accuracy (torch) {val_acc:.4f}")
    return model.eval()


def _check_outputs(model: nn.Module, data: Dataset, path: str) -> None:
    x = data.train.images(2)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:
        raise UserError(f"checkpoint {path} cannot run on {tuple(x.shape[1:])} inputs: {exc}") from None
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise UserError(
            f"checkpoint {path} outputs {tuple(out.shape[1:])} but the data has "
            f"{data.num_classes} classes"
        )
