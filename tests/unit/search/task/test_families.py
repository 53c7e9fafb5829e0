"""Model families (``search.task.families``): which family a timm name belongs to, and its defaults
per start (from scratch, fine-tuning pretrained weights, or a checkpoint already trained for the
data): training, input size, space. The user's settings win."""

from __future__ import annotations

import pytest
import timm

from search.config.bounds import BOUNDS
from search.task.data import EMBEDDED_AUGMENTS
from search.task.families import (
    FAMILIES,
    STARTS,
    Training,
    family_of,
    img_size_for,
    resolve_space,
)
from search.task.models import training_for
from spaces import Space


@pytest.fixture(scope="module")
def cnn_and_vit():
    return timm.create_model("test_resnet", num_classes=2), timm.create_model("test_vit", num_classes=2)


@pytest.mark.parametrize(("name", "family"), [
    ("resnet18", "resnet"), ("mobilenetv3_large_100", "mobilenetv3"), ("mnasnet_100", "efficientnet"),
    ("efficientnet_b0", "efficientnet"), ("convnext_atto", "convnext"), ("deit_tiny_patch16_224", "vit"),
    ("vit_tiny_patch16_224", "vit"), ("regnetx_002", "cnn"),
])
def test_a_timm_name_belongs_to_the_family_of_its_module(name, family):
    assert family_of(name).name == family


def test_a_name_prefix_wins_over_the_module():
    assert family_of("mobilenetv2_100").name == "mobilenetv2"  # built by timm.models.efficientnet
    assert family_of("mobilenetv2_035").name == "mobilenetv2"
    assert family_of("efficientnet_b0").name == "efficientnet"
    assert FAMILIES.get("mobilenetv2").scratch.epochs > FAMILIES.get("efficientnet").scratch.epochs


def test_an_unknown_module_falls_back_by_architecture():
    assert family_of("test_byobnet").name == "cnn"
    assert family_of("test_byobnet", vit=True).name == "vit"  # a VisionTransformer built elsewhere


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_is_consistent(family):
    fam = FAMILIES.get(family)
    Space.load(fam.space)  # its preset exists
    assert fam.kind in ("cnn", "vit")
    assert fam.embedded_augment in EMBEDDED_AUGMENTS
    assert BOUNDS["img_size"].low <= fam.img_size <= BOUNDS["img_size"].high
    for name in (*fam.examples, fam.tiny):
        assert timm.is_model(name), name
        if fam.modules or fam.prefixes:  # the fallbacks have neither
            assert family_of(name) is fam, name
    for start in STARTS:
        t = fam.training(start)
        assert t.epochs >= 0 and 0 < t.lr <= 1 and 0 < t.finetune_lr <= 1
        assert 0 <= t.warmup < 1 and 0 <= t.label_smoothing < 1
    assert fam.training("scratch").epochs > 0 and fam.training("checkpoint").epochs == 0


def test_defaults_per_family_and_start(cnn_and_vit):
    cnn, vit = cnn_and_vit
    assert training_for("test_resnet", cnn, None, None, None) == Training(15, 3e-3, 2e-3)  # scratch
    assert training_for("test_vit", vit, None, None, None) == Training(40, 1e-3, 5e-4, label_smoothing=0.1)
    assert training_for("test_resnet", cnn, None, None, None, start="pretrained") == Training(2, 5e-4, 2e-4)
    assert training_for("test_vit", vit, None, None, None, start="pretrained") == Training(2, 2e-4, 1e-4)
    assert training_for("test_resnet", cnn, None, None, None, start="checkpoint") == Training(0, 5e-4, 2e-4)
    assert training_for("test_vit", vit, None, None, None, start="checkpoint") == Training(0, 2e-4, 1e-4)
    mobile = training_for("efficientnet_b0", cnn, None, None, None)
    assert mobile == FAMILIES.get("efficientnet").scratch and mobile.label_smoothing > 0


def test_the_users_settings_win(cnn_and_vit):
    cnn, vit = cnn_and_vit
    assert training_for("test_vit", vit, 4, None, None, start="checkpoint") == Training(4, 2e-4, 1e-4)
    assert training_for("test_resnet", cnn, 3, 1e-2, 1e-3, start="pretrained") == Training(3, 1e-2, 1e-3)
    tuned = training_for("mobilenetv3_large_100", cnn, 5, 1e-2, None)
    assert (tuned.epochs, tuned.lr) == (5, 1e-2) and tuned.label_smoothing == 0.1  # the rest stays
    with pytest.raises(ValueError, match="start must be one of scratch, pretrained, checkpoint"):
        training_for("test_resnet", cnn, None, None, None, start="imagenet")


def test_input_size_and_space_per_family():
    assert img_size_for("resnet18", None) == 32  # the default main job is unchanged
    assert img_size_for("mobilenetv3_large_100", None) == 64
    assert img_size_for("mobilenetv3_large_100", 96) == 96  # --img-size wins
    assert resolve_space("auto", "resnet18", vit=False) == "default"
    assert resolve_space("auto", "efficientnet_b0", vit=False) == "mobile"
    assert resolve_space("auto", "deit_tiny_patch16_224", vit=True) == "vit"
    assert resolve_space("cnn", "efficientnet_b0", vit=False) == "cnn"


@pytest.mark.parametrize(("name", "data", "augment", "expected"), [
    ("resnet18", "digits", None, "none"),  # the default main job trains as it always did
    ("regnetx_002", "digits", None, "none"),
    ("mobilenetv3_large_100", "digits", None, "shift"),
    ("efficientnet_b0", "digits", None, "shift"),
    ("deit_tiny_patch16_224", "digits", None, "none"),
    ("mobilenetv3_large_100", "digits", "none", "none"),  # the user's choice wins
    ("mobilenetv3_large_100", "/data/flowers", None, "light"),  # an ImageFolder's default
    ("resnet18", "/data/flowers", "strong", "strong"),
])
def test_the_training_augmentation_is_the_users_else_the_datas_and_familys(name, data, augment, expected):
    from search.config.run_config import RunConfig
    from search.task.baseline import augment_for

    assert augment_for(RunConfig(model=name, data=data, augment=augment), name) == expected
