"""Models: any timm architecture, built from scratch or loaded from a user's checkpoint."""

from __future__ import annotations

import argparse
import difflib
import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.models import clean_state_dict
from torch import nn

from search.core.errors import UserError
from search.core.text import first_line, one_line
from search.task.families import Training, family_of


def check_model_name(name: str) -> None:
    """``UserError`` listing close matches from ``timm.list_models`` for an unknown name."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise UserError(f"unknown timm model {name!r}{hint}")


#: A ViT's token grid is kept at least this many patches per side when the patch size is automatic.
MIN_GRID = 8


def patch_size_for(img_size: int, native: int) -> int:
    """The model's own patch size, or a smaller one dividing ``img_size`` into a grid of at least
    ``MIN_GRID`` x ``MIN_GRID`` (32 px: patch 4, 8 x 8 tokens; 224 px: the native 16)."""
    if img_size // native >= MIN_GRID:
        return native
    return next(p for p in range(max(1, img_size // MIN_GRID), 0, -1) if img_size % p == 0)


def training_for(
    name: str, model: nn.Module, epochs: int | None, lr: float | None, finetune_lr: float | None,
    start: str = "scratch",
) -> Training:
    """The configured settings, or the defaults of the model's family (``search.task.families``)
    and ``start`` (one of ``families.STARTS``) where they are None."""
    from spaces.vit import is_vit  # spaces imports search; import here to keep the layers apart

    default = family_of(name, vit=is_vit(model)).training(start)
    return replace(
        default,
        epochs=default.epochs if epochs is None else epochs,
        lr=default.lr if lr is None else lr,
        finetune_lr=default.finetune_lr if finetune_lr is None else finetune_lr,
    )


def create(
    name: str, num_classes: int, img_size: int, patch_size: int | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """A timm model for ``num_classes``: random weights, or (``pretrained``) timm's pretrained
    weights from the Hugging Face cache (downloaded there when missing) with a new classifier.

    Models with a patch embedding (ViT, DeiT) are built for ``img_size`` with ``patch_size``
    (None: ``patch_size_for``); timm resamples pretrained patch and position embeddings to them.
    Other architectures ignore both.
    """
    check_model_name(name)
    if pretrained:
        _pretrained_cfg(name)  # before building anything
    model, kwargs = _random(name, num_classes, img_size, patch_size)
    return _pretrained(name, kwargs) if pretrained else model


def _random(
    name: str, num_classes: int, img_size: int, patch_size: int | None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model with random weights, and the ``timm.create_model`` arguments that built it."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "img_size": img_size}
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError:  # architectures without an img_size argument (most CNNs)
        kwargs = {"num_classes": num_classes}
        return timm.create_model(name, pretrained=False, **kwargs), kwargs
    native = _patch_size(model)
    if native is None:
        return model, kwargs
    wanted = patch_size or patch_size_for(img_size, native)
    if wanted == native:
        return model, kwargs
    kwargs["patch_size"] = wanted
    return timm.create_model(name, pretrained=False, **kwargs), kwargs


def _pretrained_cfg(name: str) -> Any:
    """timm's pretrained cfg for ``name``; ``UserError`` when timm knows no weights for it."""
    try:
        cfg = timm.get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown pretrained tag
        raise UserError(f"--pretrained: {first_line(exc)}") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file or cfg.state_dict):
        raise UserError(
            f"timm has no pretrained weights for {name}; leave out --pretrained to train it from "
            "scratch, or pass --checkpoint FILE"
        )
    return cfg


#: The Hugging Face files timm loads a model's weights from, in its order of preference.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Where an exception comes from when fetching weights failed (not when loading them into the model).
_FETCH_MODULES = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "urllib", "socket")


def cached_weights(name: str) -> str | None:
    """The Hugging Face cache's file of timm's weights for ``name`` (None: not cached, or a model
    whose weights timm loads some other way)."""
    from huggingface_hub import try_to_load_from_cache

    cfg = _pretrained_cfg(name)
    if not cfg.hf_hub_id or cfg.hf_hub_filename or cfg.custom_load or cfg.source not in (None, "", "timm"):
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    for filename in HF_WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _pretrained(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(pretrained=True)``: timm drops the checkpoint's classifier when the class
    count differs, and resamples a ViT's embeddings. Weights already in the Hugging Face cache are
    loaded from there without asking the hub (which, with no network and no ``HF_HUB_OFFLINE=1``,
    retries for a minute); others are downloaded by timm. One-line ``UserError`` when it fails."""
    from huggingface_hub import constants

    cached = cached_weights(name)
    overlay = {"file": cached} if cached else None
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as exc:
        module = type(exc).__module__.split(".")[0]
        if cached or (not isinstance(exc, OSError) and module not in _FETCH_MODULES):
            raise UserError(
                f"cannot load timm's pretrained weights for {name}: {type(exc).__name__}: "
                f"{first_line(exc)}"
            ) from None
        cache = constants.HF_HUB_CACHE
        raise UserError(
            f"timm's pretrained weights for {name} are not in the Hugging Face cache {cache} and could "
            f"not be downloaded ({type(exc).__name__}); run once with network: python -c \"import timm; "
            f"timm.create_model('{name}', pretrained=True)\", or copy such a cache there (HF_HUB_CACHE), "
            "or pass --checkpoint FILE"
        ) from None


def check_patch_size(patch_size: int | None, base_models: dict[str, nn.Module]) -> None:
    """``--patch-size`` must concern at least one of the models (a mixed run may list CNNs too)."""
    if patch_size is not None and all(_patch_size(m) is None for m in base_models.values()):
        raise UserError(f"--patch-size applies to ViT-style models, not {', '.join(base_models)}")


def _patch_size(model: nn.Module) -> int | None:
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    return int(size[0]) if isinstance(size, (tuple, list)) else None


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model with a checkpoint's weights: ``head_reset`` when its classifier was re-initialised
    (trained for another class count: fine-tune it like a pretrained model), ``source`` the
    checkpoint key the weights came from ('' for a bare state_dict, 'nn.Module' for a whole model)."""

    model: nn.Module
    head_reset: bool
    source: str


#: The keys a checkpoint may hold its state_dict under, preferred in this order: the EMA weights
#: first, as timm's own loader does (``timm.models.load_state_dict(use_ema=True)``).
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "model_state_dict")
#: How many keys a mismatch error names per kind.
NAMED_KEYS = 3

_logger = logging.getLogger(__name__)


def load_checkpoint(
    model: nn.Module, path: str, warn: Callable[[str], None] = _logger.warning
) -> LoadedCheckpoint:
    """Load a checkpoint into ``model``: ``.safetensors``, or a torch file holding a state_dict
    (bare or under one of ``STATE_DICT_KEYS``; a DDP ``module.`` prefix is removed), or a whole
    pickled model, returned as it is (its architecture may differ from the named one, e.g. pruned).

    A classifier for another class count (or none) is re-initialised, with one line to ``warn``;
    any other mismatch is a ``UserError``.
    """
    file = Path(path)
    if not file.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    obj = _read(file, path)
    if isinstance(obj, nn.Module):
        return LoadedCheckpoint(obj.eval(), head_reset=False, source="nn.Module")
    source = ""
    if isinstance(obj, Mapping):
        source = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)), "")
        obj = obj[source] if source else obj
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} holds neither a state_dict nor a model")
    head_reset = _load_state(model, clean_state_dict(dict(obj)), path, warn)
    return LoadedCheckpoint(model.eval(), head_reset=head_reset, source=source)


def _read(file: Path, path: str) -> Any:
    """The file's contents: a safetensors state_dict, or what ``torch.load`` unpickles."""
    if file.suffix == ".safetensors":
        try:
            return timm.models.load_state_dict(str(file))
        except Exception as exc:
            raise UserError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    try:  # timm's training checkpoints keep their arguments as an argparse.Namespace
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
        pass
    except Exception as exc:
        raise UserError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    try:  # a whole saved model needs full unpickling: only load files you trust
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:
        try:  # safetensors under another suffix
            return safetensors.torch.load_file(file, device="cpu")
        except Exception:
            raise UserError(f"cannot read checkpoint {path}: {first_line(exc)}") from None


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The module names of the model's classifier(s): timm's ``pretrained_cfg['classifier']`` and
    what ``get_classifier()`` returns (two for a distilled DeiT: ``head`` and ``head_dist``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    named = cfg.get("classifier") or ()
    names = [named] if isinstance(named, str) else list(named)
    if hasattr(model, "get_classifier"):
        heads = model.get_classifier()
        heads = heads if isinstance(heads, (tuple, list)) else (heads,)
        names += [n for n, m in model.named_modules() if n and any(m is h for h in heads)]
    return tuple(dict.fromkeys(names))


def _load_state(
    model: nn.Module, state: dict[str, torch.Tensor], path: str, warn: Callable[[str], None]
) -> bool:
    """Load ``state`` strictly, but for a classifier of another class count (re-initialised: True)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        model.load_state_dict(state, strict=True)
        return False
    heads = classifier_names(model)

    def in_head(key: str) -> bool:
        return any(key.startswith(f"{h}.") for h in heads)

    ours = _classes(own, heads)
    theirs = _classes(state, heads)
    head_keys = [k for k in state if in_head(k)]
    only_head = all(in_head(k) for k in missing + unexpected + shapes)
    fresh = (theirs is None and not head_keys) or theirs not in (None, ours)  # none, or another count
    if only_head and ours is not None and fresh:
        model.load_state_dict({k: v for k, v in state.items() if not in_head(k)}, strict=False)
        what = "no classifier; initialised"
        if theirs is not None:
            what = f"a classifier for {theirs} classes; re-initialised"
        warn(f"checkpoint {path} has {what} for the data's {ours} classes")
        return True
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    parts = [
        f"{label}: {_few(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected))
        if keys
    ]
    if shapes:
        parts.append("shape mismatch: " + _few(
            [f"{k} {list(state[k].shape)} vs {list(own[k].shape)} in the model" for k in shapes]
        ))
    raise UserError(one_line(f"checkpoint {path} does not match the model ({arch}): {'; '.join(parts)}"))


def _classes(state: Mapping[str, torch.Tensor], heads: tuple[str, ...]) -> int | None:
    """The class count of the first classifier weight in ``state``; None when there is none."""
    weight = next((state[f"{h}.weight"] for h in heads if f"{h}.weight" in state), None)
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def _few(keys: list[str]) -> str:
    more = f" (+{len(keys) - NAMED_KEYS} more)" if len(keys) > NAMED_KEYS else ""
    return ", ".join(keys[:NAMED_KEYS]) + more
