"""Model families: each family's training defaults, input size and search space, declared as data.

A family is the timm modules its architectures come from (``timm.models.efficientnet`` builds the
EfficientNets and MNASNets, ``timm.models.mobilenetv3`` the MobileNetV3s, ...), or the name prefixes
of architectures that train differently from the rest of their module (MobileNetV2, also built by
``timm.models.efficientnet``), so a model's family is known from its name before it is built.
``edgepareto models`` prints this table.
Architectures from other timm modules fall back to ``cnn``, or to ``vit`` where ``spaces.vit.is_vit``.
A user's ``--img-size``, ``--epochs``, ``--lr`` and ``--finetune-lr`` always win over these.
"""

from __future__ import annotations

from dataclasses import dataclass

from search.core.registry import Registry

#: Where a baseline's weights start from: random ("scratch"), timm's pretrained weights or a checkpoint
#: whose classifier was re-initialised ("pretrained"), a checkpoint trained for the data's classes
#: ("checkpoint").
STARTS = ("scratch", "pretrained", "checkpoint")


@dataclass(frozen=True)
class Training:
    """How a model trains for its baseline (``epochs``, ``lr``: AdamW with a one-cycle schedule whose
    rate rises over the first ``warmup`` share of the steps, cross-entropy with ``label_smoothing``;
    ``spaces.train.fit``) and the rate it recovers at after compression (``finetune_lr``)."""

    epochs: int
    lr: float
    finetune_lr: float
    warmup: float = 0.3
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class Family:
    """One family of architectures and its defaults.

    ``img_size`` is the default input size: the size the family's from-scratch baseline reaches its
    accuracy at on the embedded digits (stride-32 networks with thin early stages need more pixels
    than a ResNet, as a ViT needs enough patches). ``space`` is the preset ``--space auto`` picks.
    ``tiny`` is a small timm model of the family, for the contract tests. ``embedded_augment`` is
    the training augmentation on the embedded digits when ``--augment`` is not given (``shift``: a
    random translation, ``search.task.data.SHIFT_SHARE``; ImageFolder data default to ``light``).
    """

    name: str
    modules: tuple[str, ...]  # timm.models.<module> that build the family's architectures
    examples: tuple[str, ...]
    kind: str  # "cnn" or "vit"
    img_size: int
    space: str
    scratch: Training
    pretrained: Training
    checkpoint: Training
    tiny: str
    note: str = ""
    embedded_augment: str = "none"
    prefixes: tuple[str, ...] = ()  # timm names that belong here whatever their module (checked first)

    def training(self, start: str) -> Training:
        """The defaults for a baseline starting from ``start`` (one of ``STARTS``)."""
        if start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, not {start!r}")
        return {"scratch": self.scratch, "pretrained": self.pretrained, "checkpoint": self.checkpoint}[start]


FAMILIES: Registry[Family] = Registry("model family")

#: Fine-tuning timm's pretrained weights: a short run at a rate well below the scratch one (a
#: scratch-size rate destroys the features); ViTs are the more fragile, hence the lower rates. A
#: checkpoint already trained for the data is used as it is (0 epochs); compression damages it like a
#: pretrained model, so it recovers at the pretrained rates.
_CNN_PRETRAINED = Training(2, 5e-4, 2e-4)
_CNN_CHECKPOINT = Training(0, 5e-4, 2e-4)
_VIT_PRETRAINED = Training(2, 2e-4, 1e-4)
_VIT_CHECKPOINT = Training(0, 2e-4, 1e-4)
#: From scratch, CNNs: 15 epochs at 3e-3 (ResNet-18 on the digits: 98% test accuracy).
_CNN_SCRATCH = Training(15, 3e-3, 2e-3)
#: Inverted-residual networks fit the digits' 1,078 training images as fast but generalise later:
#: mobilenetv3_large_100 at 64 px reached 91.7% test accuracy after 15 or 20 epochs (with or without
#: label smoothing, with or without weight decay on norms and biases), 92.8-97.2% after 40 epochs at
#: 3e-3 with label smoothing 0.1, and 97.8% with the digits shifted at random as well (``shift``;
#: mobilenetv2_100: 87.2% without, 98.1% with; README, "Model families").
_MOBILE_SCRATCH = Training(40, 3e-3, 2e-3, label_smoothing=0.1)
#: MobileNetV2 generalises later still: mobilenetv2_100 at 64 px, shifted, 40 epochs reached 95.8-98.1%
#: test accuracy over four initial weights (about 96.8% on average), 60 epochs 97.8% and 98.9% on two
#: of them (README, "Model families").
_MOBILENETV2_SCRATCH = Training(60, 3e-3, 2e-3, label_smoothing=0.1)


def _register(family: Family) -> Family:
    FAMILIES.register(family.name)(family)
    return family


RESNET = _register(Family(
    "resnet", ("resnet",), ("resnet18", "resnet34", "resnet50", "resnet10t"), "cnn", 32, "default",
    _CNN_SCRATCH, _CNN_PRETRAINED, _CNN_CHECKPOINT, tiny="test_resnet",
))
MOBILENETV3 = _register(Family(
    "mobilenetv3", ("mobilenetv3",), ("mobilenetv3_large_100", "mobilenetv3_small_100", "lcnet_050"),
    "cnn", 64, "mobile", _MOBILE_SCRATCH, _CNN_PRETRAINED, _CNN_CHECKPOINT, tiny="mobilenetv3_small_050",
    note="inverted residuals with squeeze-excitation; 64 px: at 32 px the 16- and 24-channel early "
    "stages see 8x8 maps", embedded_augment="shift",
))
EFFICIENTNET = _register(Family(
    "efficientnet", ("efficientnet",), ("efficientnet_b0", "mnasnet_100", "tinynet_e"),
    "cnn", 64, "mobile", _MOBILE_SCRATCH, _CNN_PRETRAINED, _CNN_CHECKPOINT, tiny="test_efficientnet",
    note="timm's EfficientNet builder: EfficientNets, MNASNet (MobileNetV2: its own family); inverted "
    "residuals", embedded_augment="shift",
))
MOBILENETV2 = _register(Family(
    "mobilenetv2", (), ("mobilenetv2_100", "mobilenetv2_050", "mobilenetv2_140"), "cnn", 64, "mobile",
    _MOBILENETV2_SCRATCH, _CNN_PRETRAINED, _CNN_CHECKPOINT, tiny="mobilenetv2_050",
    note="built by timm's EfficientNet builder, inverted residuals without squeeze-excitation; from "
    "scratch it needs 60 epochs where the EfficientNets need 40", embedded_augment="shift",
    prefixes=("mobilenetv2_",),
))
CONVNEXT = _register(Family(
    "convnext", ("convnext",), ("convnext_atto", "convnext_femto", "convnext_pico"), "cnn", 32,
    "default", _CNN_SCRATCH, _CNN_PRETRAINED, _CNN_CHECKPOINT, tiny="test_convnext",
    embedded_augment="shift",
))
VIT = _register(Family(
    "vit", ("vision_transformer", "deit"),
    ("vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"), "vit", 32,
    "vit", Training(40, 1e-3, 5e-4, label_smoothing=0.1), _VIT_PRETRAINED, _VIT_CHECKPOINT,
    tiny="test_vit",
    note="from scratch a ViT needs a lower rate (at 3e-3 vit_tiny did not learn) and more epochs; "
    "32 px with 4 px patches (models.patch_size_for); the digits unshifted: deit_tiny reached 94.7% test "
    "accuracy (val 96.4%) without, 95.0% (val 93.3%) with shift",
))
#: Fallbacks for architectures of other timm modules.
CNN = _register(Family(
    "cnn", (), (), "cnn", 32, "default", _CNN_SCRATCH, _CNN_PRETRAINED, _CNN_CHECKPOINT,
    tiny="test_byobnet", note="any other CNN (timm's other modules)",
))


def timm_module(name: str) -> str:
    """The timm module that builds ``name`` (``efficientnet`` for ``mobilenetv2_100``)."""
    from timm.models import model_entrypoint

    return model_entrypoint(name).__module__.rpartition(".")[2]


def family_of(name: str, vit: bool | None = None) -> Family:
    """The family of the timm model ``name``: the first family whose ``prefixes`` it starts with,
    else the family of its timm module; an architecture of another module is ``cnn``, or ``vit``
    when ``vit`` (``spaces.vit.is_vit`` of the built model) says so."""
    families = [FAMILIES.get(f) for f in FAMILIES]
    found = next((f for f in families if any(name.startswith(p) for p in f.prefixes)), None)
    if found is not None:
        return found
    module = timm_module(name)
    found = next((f for f in families if module in f.modules), None)
    if found is not None:
        return found
    return VIT if vit else CNN


def img_size_for(name: str, img_size: int | None) -> int:
    """``--img-size`` when given, else the family's default for the timm model ``name``."""
    return img_size if img_size is not None else family_of(name).img_size


def resolve_space(spec: str, name: str, vit: bool) -> str:
    """``--space``: ``auto`` is the family's preset (``vit`` for a ViT, ``mobile`` for the
    inverted-residual families, ``default`` for the others); anything else is kept."""
    return family_of(name, vit=vit).space if spec == "auto" else spec


def _training_text(t: Training) -> str:
    return f"{t.epochs} ep, lr {t.lr:g}, warm-up {t.warmup:g}, smoothing {t.label_smoothing:g}"


def describe(family: Family) -> list[tuple[str, str]]:
    """One family as (label, value) lines: what ``edgepareto models`` prints."""
    covers = ", ".join([f"timm.models.{m}" for m in family.modules] + [f"{p}*" for p in family.prefixes])
    covers = covers or "fallback"
    lines = [
        ("builds", covers), ("e.g.", ", ".join(family.examples) or "-"),
        ("input size", f"{family.img_size} px"),
        ("digits aug.", family.embedded_augment),
        ("space (auto)", family.space),
        ("from scratch", _training_text(family.scratch)),
        ("pretrained", _training_text(family.pretrained)),
        ("checkpoint", _training_text(family.checkpoint)),
        ("recovery lr", f"{family.scratch.finetune_lr:g} (after a pretrained or checkpoint start: "
                        f"{family.pretrained.finetune_lr:g})"),
    ]
    return lines + ([("note", family.note)] if family.note else [])


def format_families(name: str | None = None) -> str:
    """Every family's defaults, or (``name``) the family of that timm model and its defaults."""
    chosen = [family_of(name)] if name else [FAMILIES.get(f) for f in FAMILIES.names()]
    blocks = []
    for fam in chosen:
        head = f"{name}: family {fam.name}" if name else fam.name
        body = "\n".join(f"  {label:<13} {value}" for label, value in describe(fam))
        blocks.append(f"{head}\n{body}")
    footer = (
        "--img-size, --augment, --epochs, --lr and --finetune-lr override these; --space overrides "
        "the preset."
    )
    return "\n\n".join(blocks) + "\n\n" + footer
