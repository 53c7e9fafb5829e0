"""Models: any timm architecture, built from scratch or loaded from a user's checkpoint."""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from search.errors import UserError


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


def create(name: str, num_classes: int, img_size: int) -> nn.Module:
    """A timm model with random weights (``pretrained=False``: nothing is downloaded)."""
    check_model_name(name)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=img_size)
    except TypeError:  # architectures without an img_size argument (most CNNs)
        return timm.create_model(name, pretrained=False, num_classes=num_classes)


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
            raise UserError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
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
        raise UserError(f"checkpoint {path} does not match the model: {detail[:300]}") from None
    return model.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
