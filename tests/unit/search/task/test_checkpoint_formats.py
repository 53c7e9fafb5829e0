"""Checkpoints in timm's formats: safetensors, torch files with the weights bare or under a key (the
EMA ones preferred), a DDP ``module.`` prefix; a classifier for another class count is re-initialised
with a one-line warning; any other mismatch is a one-line ``UserError``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

from search.core.errors import UserError
from search.task.models import create, load_checkpoint

MODEL = "test_resnet"
CLASSES = 3
IMG = 32
RESET = "checkpoint {path} has a classifier for 1000 classes; re-initialised for the data's 2 classes"


def tiny(seed: int, num_classes: int = CLASSES, name: str = MODEL) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=num_classes).eval()


def outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0)))


def state(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.clone() for k, v in model.state_dict().items()}


def save(obj: object, file: Path) -> str:
    if file.suffix == ".safetensors":
        safetensors.torch.save_file(obj, str(file))
    else:
        torch.save(obj, file)
    return str(file)


def loaded(path: str, warnings: list[str] | None = None):
    shell = create(MODEL, CLASSES, IMG)
    return load_checkpoint(shell, path, warn=(warnings if warnings is not None else []).append)


FORMATS = {  # file name -> (what it holds, given the source model; the key the weights come from)
    "bare.safetensors": (lambda m: state(m), ""),
    "bare.pth": (lambda m: state(m), ""),
    "bare.bin": (lambda m: state(m), ""),
    "under_state_dict.pth": (lambda m: {"state_dict": state(m), "epoch": 3}, "state_dict"),
    "under_model.pt": (lambda m: {"model": state(m)}, "model"),
    "under_model_state_dict.pt": (lambda m: {"model_state_dict": state(m), "n": 7}, "model_state_dict"),
    "ddp.pth": (lambda m: state(m, "module."), ""),
    "ddp_under_state_dict.pth": (lambda m: {"state_dict": state(m, "module.")}, "state_dict"),
}


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_loads_the_source_weights(tmp_path, name):
    source = tiny(seed=1)
    holds, key = FORMATS[name]
    warnings: list[str] = []
    result = loaded(save(holds(source), tmp_path / name), warnings)
    assert torch.equal(outputs(result.model), outputs(source))
    assert (result.head_reset, result.source, warnings) == (False, key, [])


def test_the_ema_weights_are_preferred(tmp_path):
    trained, ema = tiny(seed=1), tiny(seed=2)
    assert not torch.equal(outputs(trained), outputs(ema))
    path = save({"state_dict": state(trained), "state_dict_ema": state(ema)}, tmp_path / "ema.pth")
    result = loaded(path)
    assert torch.equal(outputs(result.model), outputs(ema)) and result.source == "state_dict_ema"


def test_a_timm_training_checkpoint(tmp_path):
    """What timm's train.py saves: its arguments as a Namespace, optimizer state, EMA weights that kept
    ModelEmaV2's ``module.`` prefix."""
    trained, ema = tiny(seed=1), tiny(seed=2)
    optimizer = torch.optim.AdamW(trained.parameters())
    checkpoint = {
        "epoch": 9, "arch": MODEL, "state_dict": state(trained), "optimizer": optimizer.state_dict(),
        "args": argparse.Namespace(model=MODEL, lr=1e-3), "state_dict_ema": state(ema, "module."),
    }
    result = loaded(save(checkpoint, tmp_path / "last.pth.tar"))
    assert torch.equal(outputs(result.model), outputs(ema)) and result.source == "state_dict_ema"


def test_a_whole_pickled_model_is_returned_as_it_is(tmp_path):
    other = tiny(seed=1, num_classes=7)  # another class count: the file's model is kept anyway
    result = loaded(save(other, tmp_path / "whole.pt"))
    assert result.model.get_classifier().out_features == 7
    assert (result.head_reset, result.source) == (False, "nn.Module")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_classifier_for_another_class_count_is_reinitialised(tmp_path, suffix):
    source = tiny(seed=1, num_classes=1000)
    path = save(state(source), tmp_path / f"imagenet{suffix}")
    torch.manual_seed(5)
    shell = create(MODEL, 2, IMG)
    fresh_head = shell.fc.weight.clone()
    warnings: list[str] = []
    result = load_checkpoint(shell, path, warn=warnings.append)
    assert warnings == [RESET.format(path=path)]
    assert result.head_reset and torch.equal(result.model.fc.weight, fresh_head)
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert backbone and all(torch.equal(result.model.state_dict()[k], v) for k, v in backbone.items())


def test_both_heads_of_a_distilled_deit_are_reinitialised(tmp_path):
    name = "deit_tiny_distilled_patch16_224"
    source = tiny(seed=1, num_classes=1000, name=name)
    path = save({"model": state(source)}, tmp_path / "deit.pth")
    warnings: list[str] = []
    result = load_checkpoint(create(name, 2, 224), path, warn=warnings.append)
    assert warnings == [RESET.format(path=path)]
    model = result.model
    assert result.head_reset and model.head.out_features == 2 and model.head_dist.out_features == 2
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_a_checkpoint_without_classifier_gets_a_new_one(tmp_path):
    path = save(state(tiny(seed=1, num_classes=0)), tmp_path / "features.pth")
    warnings: list[str] = []
    result = loaded(path, warnings)
    assert result.head_reset
    assert warnings == [f"checkpoint {path} has no classifier; initialised for the data's {CLASSES} classes"]


def test_another_architecture_is_one_line_naming_keys(tmp_path):
    path = save(state(tiny(seed=1, name="test_vit")), tmp_path / "vit.pth")
    with pytest.raises(UserError) as err:
        loaded(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"checkpoint {path} does not match the model (test_resnet): ")
    assert "missing keys: conv1.0.weight," in text and "unexpected keys: cls_token, pos_embed," in text


def test_a_shape_mismatch_outside_the_classifier_is_an_error(tmp_path):
    """A ViT checkpoint for 16-pixel patches does not fit a model built with 4-pixel ones."""
    path = save(state(tiny(seed=1, name="test_vit")), tmp_path / "vit.pth")
    with pytest.raises(UserError) as err:
        load_checkpoint(create("test_vit", 1000, IMG), path)
    text = str(err.value)
    assert "\n" not in text and "shape mismatch: pos_embed [1, 101, 64] vs [1, 65, 64] in the model" in text


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(UserError, match=r"^checkpoint \S+missing.pt does not exist$"):
        loaded(str(tmp_path / "missing.pt"))
    for name in ("bad.pt", "bad.safetensors"):
        (tmp_path / name).write_bytes(b"\x00garbage" * 10)
        with pytest.raises(UserError, match=r"^cannot read checkpoint ") as err:
            loaded(str(tmp_path / name))
        assert "\n" not in str(err.value)
