"""Task: the base model and the data splits, with the trained baseline cached under ``runs/``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from search.config.run_config import RunConfig
from search.core.atomic import write_json, write_text, write_with
from search.core.errors import UserError
from search.core.layout import UNREADABLE_FILE
from search.core.paths import is_file_reference
from search.task import models
from search.task.data import Dataset, check_memory, load_dataset
from spaces.train import fit, predict
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

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.img_size, self.img_size)


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
    memory at ``--img-size`` (one copy per base model)."""
    check_names(cfg)
    check_memory(cfg.data, cfg.img_size, datasets=len(cfg.models))


def prepare_all(
    cfg: RunConfig, runs_root: Path, log: Callable[[str], None], warn: Callable[[str], None]
) -> dict[str, Task]:
    """One task per base model, in the order given (the entry points ran ``check_inputs`` first)."""
    return {name: prepare(cfg, name, runs_root, log, warn) for name in cfg.models}


def prepare(
    cfg: RunConfig, name: str, runs_root: Path, log: Callable[[str], None],
    warn: Callable[[str], None],
) -> Task:
    """Validate model and data, load the checkpoint or the cached (or new) baseline, and the teacher.
    Unreadable images are skipped with a warning naming the first few (``unreadable_warning``)."""
    mean, std = models.data_config(name)
    data = load_dataset(
        cfg.data, cfg.img_size, mean, std, cfg.seed, cfg.val_fraction, cfg.test_fraction
    )
    if data.unreadable:
        listing = Path(runs_root) / str(cfg.name) / UNREADABLE_FILE
        warn(unreadable_warning(data.unreadable, cfg.data, listing))
    torch.manual_seed(cfg.seed)  # the baseline's initial weights are seeded too
    model = models.create(name, data.num_classes, cfg.img_size, cfg.patch_size)
    if cfg.checkpoint:
        model = models.load_checkpoint(model, cfg.checkpoint)
        _check_outputs(model, data, cfg.checkpoint)
    else:
        model = cached_baseline(model, name, cfg, data, runs_root, log)
    teacher = load_teacher(cfg, name, data, runs_root, log)
    training = models.training_for(model, cfg.epochs, cfg.lr, cfg.finetune_lr)
    return Task(
        model.eval(), data, cfg.img_size, mean, std, name, teacher, cfg.teacher, training.finetune_lr
    )


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
    if is_file_reference(cfg.teacher):  # a file (checked by check_names), never a name found on disk
        torch.manual_seed(cfg.seed)
        shell = models.create(student, data.num_classes, cfg.img_size, cfg.patch_size)
        teacher = models.load_checkpoint(shell, cfg.teacher)
        _check_outputs(teacher, data, cfg.teacher)
        log(f"teacher: {cfg.teacher}")
        return teacher.eval()
    torch.manual_seed(cfg.seed)
    teacher = models.create(cfg.teacher, data.num_classes, cfg.img_size)
    return cached_baseline(teacher, cfg.teacher, cfg, data, runs_root, log, role="teacher")


def baseline_key(cfg: RunConfig, name: str, data: Dataset, training: models.Training) -> str:
    """What decides the trained weights: model, data (its fingerprint includes the normalisation),
    training settings."""
    key = {
        "model": name, "data": data.fingerprint, "classes": data.num_classes,
        "img_size": cfg.img_size, "epochs": training.epochs, "batch_size": cfg.batch_size,
        "lr": training.lr, "seed": cfg.seed, "torch": torch.__version__.split("+")[0],
        "patch_size": cfg.patch_size,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{name}-{digest}"


def cached_baseline(
    model: nn.Module, name: str, cfg: RunConfig, data: Dataset, runs_root: Path,
    log: Callable[[str], None], role: str = "baseline",
) -> nn.Module:
    training = models.training_for(model, cfg.epochs, cfg.lr, cfg.finetune_lr)
    epochs, lr = training.epochs, training.lr
    folder = runs_root / CACHE_DIR / baseline_key(cfg, name, data, training)
    weights = folder / "model.pt"
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        log(f"{role}: cached {weights}")
        return model.eval()
    log(f"{role}: training {name} for {epochs} epochs (lr {lr:g}, seed {cfg.seed}); cached after")
    fit(
        model, data.train.x, data.train.y, epochs=epochs, lr=lr,
        batch_size=cfg.batch_size, seed=cfg.seed,
        on_epoch=lambda e, loss: log(f"{role}: {name} epoch {e}/{epochs} loss {loss:.4f}"),
        checkpoint=slot_checkpoint,
    )
    val_acc = float((predict(model, data.val.x) == data.val.y).float().mean())
    write_with(weights, lambda tmp: torch.save(model.state_dict(), tmp))
    write_json(folder / "meta.json", {"model": name, "config": cfg.to_dict(), "val_accuracy_torch": val_acc})
    log(f"{role}: {name} val accuracy (torch) {val_acc:.4f}")
    return model.eval()


def _check_outputs(model: nn.Module, data: Dataset, path: str) -> None:
    try:
        with torch.no_grad():
            out = model.eval()(data.train.x[:2])
    except Exception as exc:
        raise UserError(f"checkpoint {path} cannot run on {data.train.x.shape[1:]} inputs: {exc}") from None
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise UserError(
            f"checkpoint {path} outputs {tuple(out.shape[1:])} but the data has "
            f"{data.num_classes} classes"
        )
