"""Models: any timm architecture, built from scratch or loaded from a user's checkpoint."""

from __future__ import annotations

import difflib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from search.core.errors import UserError
from search.core.text import first_line, one_line


def check_model_name(name: str) -> None:
    """``UserError`` listing close matches from ``timm.list_models`` for an unknown name."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise UserError(f"unknown timm model {name!r}{hint}")


def data_config(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the architecture expects its inputs normalised with."""
    cfg = timm.get_pretrained_cfg(name)
    mean = getattr(cfg, "mean", None) or timm.data.IMAGENET_DEFAULT_MEAN
    std = getattr(cfg, "std", None) or timm.data.IMAGENET_DEFAULT_STD
    return tuple(mean), tuple(std)


#: A ViT's token grid is kept at least this many patches per side when the patch size is automatic.
MIN_GRID = 8


def patch_size_for(img_size: int, native: int) -> int:
    """The model's own patch size, or a smaller one dividing ``img_size`` into a grid of at least
    ``MIN_GRID`` x ``MIN_GRID`` (32 px: patch 4, 8 x 8 tokens; 224 px: the native 16)."""
    if img_size // native >= MIN_GRID:
        return native
    return next(p for p in range(max(1, img_size // MIN_GRID), 0, -1) if img_size % p == 0)


@dataclass(frozen=True)
class Training:
    """How a model family trains from scratch (baseline) and recovers (fine-tuning)."""

    epochs: int
    lr: float
    finetune_lr: float


#: AdamW with a one-cycle schedule. ViTs trained from scratch need a lower rate (at 3e-3 vit_tiny did
#: not learn in 3 epochs of digits) and more epochs (15 epochs: 78-88% validation accuracy).
TRAINING = {"cnn": Training(15, 3e-3, 2e-3), "vit": Training(30, 1e-3, 5e-4)}


def training_for(
    model: nn.Module, epochs: int | None, lr: float | None, finetune_lr: float | None
) -> Training:
    """The configured settings, or the model family's defaults where they are None."""
    from spaces.vit import is_vit  # spaces imports search; import here to keep the layers apart

    default = TRAINING["vit" if is_vit(model) else "cnn"]
    return Training(
        default.epochs if epochs is None else epochs,
        default.lr if lr is None else lr,
        default.finetune_lr if finetune_lr is None else finetune_lr,
    )


def create(
    name: str, num_classes: int, img_size: int, patch_size: int | None = None
) -> nn.Module:
    """A timm model with random weights (``pretrained=False``: nothing is downloaded).

    Models with a patch embedding (ViT, DeiT) are built for ``img_size`` with ``patch_size``
    (None: ``patch_size_for``); other architectures ignore both.
    """
    check_model_name(name)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=img_size)
    except TypeError:  # architectures without an img_size argument (most CNNs)
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    native = _patch_size(model)
    if native is None:
        return model
    wanted = patch_size or patch_size_for(img_size, native)
    if wanted == native:
        return model
    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, img_size=img_size, patch_size=wanted
    )


def check_patch_size(patch_size: int | None, base_models: dict[str, nn.Module]) -> None:
    """``--patch-size`` must concern at least one of the models (a mixed run may list CNNs too)."""
    if patch_size is not None and all(_patch_size(m) is None for m in base_models.values()):
        raise UserError(f"--patch-size applies to ViT-style models, not {', '.join(base_models)}")


def _patch_size(model: nn.Module) -> int | None:
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    return int(size[0]) if isinstance(size, (tuple, list)) else None


def load_checkpoint(model: nn.Module, path: str) -> nn.Module:
    """Load a state_dict (plain, or under 'state_dict'/'model') into ``model``, or return a whole
    pickled model as it is (its architecture may differ from the named one, e.g. already pruned)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        obj: Any = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
        try:  # a whole saved model needs full unpickling: only load files you trust
            obj = torch.load(file, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    if isinstance(obj, nn.Module):
        return obj.eval()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} holds neither a state_dict nor a model")
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise UserError(f"checkpoint {path} does not match the model: {one_line(detail)}") from None
    return model.eval()
