"""Task: the base model and the data splits, with the trained baseline cached under ``runs/``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from search import models
from search.atomic import write_json, write_with
from search.config import RunConfig
from search.data import Dataset, load_dataset
from search.errors import UserError
from search.train import fit, predict

CACHE_DIR = ".cache/baselines"


@dataclass(frozen=True)
class Task:
    """What every trial starts from: the uncompressed base model and the data."""

    base: nn.Module
    data: Dataset
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.img_size, self.img_size)


def prepare(
    cfg: RunConfig, runs_root: Path, log: Callable[[str], None], warn: Callable[[str], None]
) -> Task:
    """Validate model and data, then load the checkpoint or the cached (or new) baseline."""
    models.check_model_name(cfg.model)
    mean, std = models.data_config(cfg.model)
    data = load_dataset(
        cfg.data, cfg.img_size, mean, std, cfg.seed, cfg.val_fraction, cfg.test_fraction
    )
    if data.skipped:
        warn(f"skipped {data.skipped} unreadable image(s) in {cfg.data}")
    torch.manual_seed(cfg.seed)  # the baseline's initial weights are seeded too
    model = models.create(cfg.model, data.num_classes, cfg.img_size)
    if cfg.checkpoint:
        model = models.load_checkpoint(model, cfg.checkpoint)
        _check_outputs(model, data, cfg.checkpoint)
    else:
        model = cached_baseline(model, cfg, data, runs_root, log)
    return Task(model.eval(), data, cfg.img_size, mean, std)


def baseline_key(cfg: RunConfig, data: Dataset) -> str:
    """What decides the trained weights: model, data, and training settings."""
    key = {
        "model": cfg.model, "data": data.fingerprint, "classes": data.num_classes,
        "img_size": cfg.img_size, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "lr": cfg.lr, "seed": cfg.seed, "torch": torch.__version__.split("+")[0],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.model}-{digest}"


def cached_baseline(
    model: nn.Module, cfg: RunConfig, data: Dataset, runs_root: Path, log: Callable[[str], None]
) -> nn.Module:
    folder = runs_root / CACHE_DIR / baseline_key(cfg, data)
    weights = folder / "model.pt"
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        log(f"baseline: cached {weights}")
        return model.eval()
    log(f"baseline: training {cfg.model} for {cfg.epochs} epochs (seed {cfg.seed}); cached after")
    fit(
        model, data.train.x, data.train.y, epochs=cfg.epochs, lr=cfg.lr,
        batch_size=cfg.batch_size, seed=cfg.seed,
        on_epoch=lambda e, loss: log(f"baseline: epoch {e}/{cfg.epochs} loss {loss:.4f}"),
    )
    val_acc = float((predict(model, data.val.x) == data.val.y).float().mean())
    write_with(weights, lambda tmp: torch.save(model.state_dict(), tmp))
    write_json(folder / "meta.json", {"config": cfg.to_dict(), "val_accuracy_torch": val_acc})
    log(f"baseline: val accuracy (torch) {val_acc:.4f}")
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
