"""RunConfig: one schema for CLI flags, YAML (``run.yaml``) and, later, REST JSON."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search.config.bounds import BOUNDS, check_bound
from search.config.objectives import DEFAULT_OBJECTIVES, OBJECTIVES, directions
from search.core.errors import UserError
from search.study.samplers import SAMPLERS, create_sampler

LATENCY_MODES = ("measure", "predict", "hybrid")
AUGMENTS = ("none", "light", "strong", "shift")
BACKENDS = ("optuna", "ray")
#: off: every candidate is fine-tuned; structure: its structure is screened first (search.study.screen);
#: halving: screened, then fine-tuned rung by rung while it ranks in the top third (search.study.halving)
FIDELITIES = ("off", "structure", "halving")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a search; saved as ``runs/NAME/run.yaml`` so a run reproduces."""

    name: str | None = None
    runs_dir: str = "runs"
    model: str | tuple[str, ...] = "resnet18"  # several: the model becomes a searched choice
    checkpoint: str | None = None  # timm checkpoint formats: .safetensors, .pth/.pt (state_dict, ema, model)
    pretrained: bool = False  # timm's pretrained weights from the Hugging Face cache, classifier reset
    teacher: str = "base"  # distillation teacher: base, a timm model name, or a checkpoint file
    data: str = "digits"
    img_size: int | None = None  # None: the model family's (search.task.families; 32 for ResNets)
    augment: str | None = None  # none|light|strong|shift; None: light (ImageFolder), the family's (digits)
    workers: int | None = None  # DataLoader processes for an ImageFolder; None: data.default_workers
    patch_size: int | None = None  # ViTs only; None: chosen from img_size (see models.patch_size_for)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    epochs: int | None = None  # None: per model family and start (scratch or not), models.training_for
    batch_size: int = 64
    lr: float | None = None  # None: per model family, see search.task.families
    finetune_lr: float | None = None
    space: str = "auto"  # auto: the vit preset for ViTs, default otherwise
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    sampler: str = "tpe"
    sampler_seed: int | None = None  # None: the run's seed
    warm_start: bool = True  # enqueue each technique's canonical recipe after the baseline
    trials: int = 60
    timeout: float | None = None
    storage: str | None = None
    min_accuracy: float | None = None
    max_accuracy_drop: float | None = 5.0
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    target: str = "host"
    latency: str | None = None  # measure | predict | hybrid; None: measure where the target can be
    agent: str | None = None  # http://DEVICE:PORT of the agent measuring a device profile's target
    ca_file: str | None = None  # PEM certificate (or CA) that an https agent's certificate is checked against
    threads: int = 1
    repeats: int = 50
    backend: str = "optuna"  # optuna: trials in this process (more join with `edgepareto worker`); ray
    ray_address: str | None = None  # None: a local Ray; auto; ray://HOST:PORT; HOST:PORT
    cpus_per_trial: int | None = None  # torch and onnxruntime threads of a trial; None: all (ray: 1)
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # ray: trials at once; None: as many as the cluster's CPUs allow
    trial_timeout: float | None = None  # seconds; a longer trial fails with a timeout reason
    fidelity: str = "off"  # FIDELITIES: how much fine-tuning a candidate gets before it is judged

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(self.objectives))
        if isinstance(self.model, str) and "," in self.model:  # "resnet18,vit_tiny_patch16_224"
            object.__setattr__(self, "model", csv_items(self.model))
        if isinstance(self.model, (list, tuple)):
            names = tuple(str(m) for m in self.model)
            object.__setattr__(self, "model", names[0] if len(names) == 1 else names)
        self.validate()

    @property
    def models(self) -> tuple[str, ...]:
        """The base model(s) searched; the first is the reference for speed-ups and drops."""
        return self.model if isinstance(self.model, tuple) else (self.model,)

    def validate(self) -> None:
        """Raise ``UserError`` naming the first bad setting; size-like settings against ``BOUNDS``."""
        if self.name is not None:
            check_name(self.name)
        for key in BOUNDS:
            value = getattr(self, key)
            if value is not None or _DEFAULTS[key] is not None:  # None: automatic, where allowed
                check_bound(key, value)
        if self.patch_size is not None and self.img_size is not None and self.img_size % self.patch_size:
            raise UserError(
                f"--patch-size {self.patch_size} does not divide --img-size {self.img_size}",
                field="patch_size",
            )
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise UserError("--model needs at least one timm model name", field="model")
        if len(set(self.models)) != len(self.models):
            raise UserError("--model lists a model twice", field="model")
        if self.checkpoint is not None and len(self.models) > 1:
            raise UserError("--checkpoint needs a single --model", field="checkpoint")
        if self.checkpoint is not None and self.pretrained:
            raise UserError(
                "--pretrained and --checkpoint both give the starting weights: choose one",
                field="pretrained",
            )
        if self.augment is not None and self.augment not in AUGMENTS:
            raise UserError(
                f"--augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}", field="augment",
            )
        for key in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, key) < 0.5:
                raise UserError(f"--{key.replace('_', '-')} must lie in (0, 0.5)", field=key)
        for key in ("lr", "finetune_lr"):
            if getattr(self, key) is not None and not 0 < getattr(self, key) <= 1:
                raise UserError(f"--{key.replace('_', '-')} must lie in (0, 1]", field=key)
        if self.fidelity not in FIDELITIES:
            raise UserError(
                f"--fidelity must be one of {', '.join(FIDELITIES)}, got {self.fidelity!r}", field="fidelity",
            )
        if self.backend not in BACKENDS:
            raise UserError(
                f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}", field="backend",
            )
        if self.backend != "ray":
            for key in ("ray_address", "max_concurrent"):
                if getattr(self, key) is not None:
                    raise UserError(f"--{key.replace('_', '-')} needs --backend ray", field=key)
            if self.gpus_per_trial:
                raise UserError(
                    "--gpus-per-trial needs --backend ray (the optuna backend trains on a GPU "
                    "whenever torch sees one)", field="gpus_per_trial",
                )
        if not self.objectives:
            raise UserError(f"--objectives needs at least one of {', '.join(OBJECTIVES)}", field="objectives")
        for obj in self.objectives:
            if obj not in OBJECTIVES:
                raise UserError(
                    f"unknown objective {obj!r}; choose from {', '.join(OBJECTIVES)}", field="objectives",
                )
        if len(set(self.objectives)) != len(self.objectives):
            raise UserError("--objectives lists an objective twice", field="objectives")
        if self.sampler not in SAMPLERS:
            raise UserError(
                f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS.names())}",
                field="sampler",
            )
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise UserError("--min-accuracy is a fraction in [0, 1], e.g. 0.97", field="min_accuracy")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise UserError(
                "--max-accuracy-drop is in accuracy points and cannot be negative", field="max_accuracy_drop",
            )
        if self.latency is not None and self.latency not in LATENCY_MODES:
            raise UserError(
                f"--latency must be one of {', '.join(LATENCY_MODES)}, got {self.latency!r}", field="latency",
            )
        for key in ("max_latency_ms", "max_size_mb"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise UserError(f"--{key.replace('_', '-')} must be positive", field=key)

    @property
    def effective_sampler_seed(self) -> int:
        """The sampler's seed: ``sampler_seed``, else the run's ``seed``."""
        return self.seed if self.sampler_seed is None else self.sampler_seed

    def make_sampler(self) -> Any:
        """A fresh Optuna sampler for this run (``--sampler``, seeded)."""
        return create_sampler(self.sampler, self.effective_sampler_seed, self.trials)

    @property
    def directions(self) -> list[str]:
        return directions(self.objectives)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["objectives"] = list(self.objectives)
        if isinstance(self.model, tuple):
            out["model"] = list(self.model)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """A config from a YAML or JSON mapping: keys are the flags' names (``img_size`` or
        ``img-size``); an unknown key or a value of the wrong type is a ``UserError`` naming the key."""
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for raw, value in data.items():
            key = str(raw).replace("-", "_")
            if key not in hints:
                close = difflib.get_close_matches(key, list(hints), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UserError(f"unknown config key {raw!r}{hint}", field=key)
            if key in values:
                raise UserError(f"config key {raw!r} is given twice", field=key)
            values[key] = _typed(str(raw), value, hints[key], key)
        return cls(**values)


#: Each field's default (a bounded field whose default is None may be None: chosen automatically).
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def check_name(name: str) -> None:
    """A run name is a folder name, never a path: ``UserError`` otherwise."""
    if not NAME_RE.match(name):
        raise UserError(f"run name {name!r} must be letters, digits, '.', '_' or '-' (max 100)", field="name")


def _typed(key: str, value: Any, hint: Any, field: str | None = None) -> Any:
    """``value`` checked against the field's type ``hint`` (ints pass as floats, a comma string as a
    list); raises ``UserError`` naming ``key``."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, typing.Union) else (hint,)
    if value is None:
        if type(None) in options:
            return None
    else:
        for option in options:
            if option is bool and isinstance(value, bool):
                return value
            if option is int and isinstance(value, int) and not isinstance(value, bool):
                return value
            if option is float and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                return float(value)
            if option is str and isinstance(value, str):
                return value
            if typing.get_origin(option) is tuple:
                items = csv_items(value) if isinstance(value, str) else value
                if isinstance(items, (list, tuple)) and items and all(isinstance(i, str) for i in items):
                    return tuple(items)
    wanted = " or ".join(_TYPE_NAMES.get(o, getattr(o, "__name__", str(o))) for o in options)
    raise UserError(
        f"config key {key!r} must be {wanted}, got {value!r} ({type(value).__name__})", field=field,
    )


_TYPE_NAMES: dict[Any, str] = {
    type(None): "null", int: "an integer", float: "a finite number", str: "a string", bool: "true/false",
    tuple[str, ...]: "a list of strings",
}


def csv_items(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` as ``("a", "b", "c")``: the comma lists of flags and config values."""
    return tuple(s.strip() for s in text.split(",") if s.strip())
