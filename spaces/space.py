"""Search spaces: which techniques a search may chain, and the ranges of their parameters.

A space is data: a preset shipped in ``spaces/presets/`` or a user's YAML file of the same shape::

    name: my-space
    techniques:
      prune: {ratio: [0.3, 0.8], importance: [l1, l2]}   # searched ranges / choices
      distill: {enabled: always, epochs: 2}               # always on, epochs fixed
      quantize: {mode: [static]}

A technique that is not listed is off. A parameter that is not listed is searched over its whole
declared domain (``Space.describe`` says so). ``enabled`` is ``search`` (default: on/off is searched)
or ``always``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import zip_longest
from pathlib import Path
from typing import Any

import optuna
import yaml
from torch import nn

from search.core.errors import UserError
from search.core.paths import SPACE_SUFFIXES, is_file_reference
from search.core.text import first_line
from spaces.base import TECHNIQUES, Candidate, Step
from spaces.params import Param, suggest_all

PRESET_DIR = Path(__file__).with_name("presets")
PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
AUTO = "auto"
MODEL_PARAM = "model"
ENABLED = ("search", "always")


@dataclass(frozen=True)
class TechniqueSpace:
    """One technique's switch and (narrowed) parameters."""

    name: str
    always: bool
    params: tuple[Param, ...]

    def describe(self) -> str:
        switch = "always" if self.always else "on/off searched"
        return f"{self.name} ({switch}): " + ", ".join(
            f"{p.name}={p.describe()}" for p in self.params
        )


@dataclass(frozen=True)
class Space:
    """An ordered set of technique spaces; samples a ``Candidate`` from an Optuna trial."""

    name: str
    techniques: tuple[TechniqueSpace, ...]

    @classmethod
    def load(cls, spec: str) -> Space:
        """A preset name or the path of a YAML space file."""
        path = Path(spec)
        if spec == AUTO:
            raise UserError("space 'auto' is resolved per model; call spaces.space.resolve first")
        if spec in PRESETS:
            path = PRESET_DIR / f"{spec}.yaml"
        elif not is_file_reference(spec, SPACE_SUFFIXES) or not path.is_file():
            raise UserError(
                f"space {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file"
            )
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read space file {path}: {first_line(exc)}") from None
        return cls.from_mapping(data, default_name=path.stem, where=str(path))

    @classmethod
    def from_mapping(cls, data: Any, default_name: str = "custom", where: str = "space") -> Space:
        if not isinstance(data, Mapping) or not isinstance(data.get("techniques"), Mapping):
            raise UserError(f"{where}: expected a mapping with a 'techniques' mapping")
        unknown = set(data) - {"name", "techniques"}
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        spaces = [
            _technique_space(str(name), spec, f"{where}: {name}")
            for name, spec in data["techniques"].items()
        ]
        if not spaces:
            raise UserError(f"{where}: no techniques listed")
        spaces.sort(key=lambda t: TECHNIQUES.get(t.name).order)
        always = [t.name for t in spaces if t.always]
        clash = next(((a, b) for a in always for b in always if a < b and excluded(a, b)), None)
        if clash is not None:
            raise UserError(f"{where}: {clash[0]} and {clash[1]} cannot both be enabled: always")
        return cls(str(data.get("name", default_name)), tuple(spaces))

    def to_mapping(self) -> dict[str, Any]:
        """The resolved space, every parameter explicit (saved beside a run)."""
        out: dict[str, Any] = {}
        for t in self.techniques:
            spec: dict[str, Any] = {"enabled": "always" if t.always else "search"}
            for p in t.params:
                if hasattr(p, "choices"):
                    spec[p.name] = list(p.choices)
                else:
                    spec[p.name] = [p.low, p.high]
            out[t.name] = spec
        return {"name": self.name, "techniques": out}

    def describe(self) -> str:
        return "\n".join(t.describe() for t in self.techniques)

    def check(self, model: nn.Module, model_name: str) -> None:
        """``UserError`` if a listed technique cannot apply to ``model``."""
        for t in self.techniques:
            if not TECHNIQUES.get(t.name).supports(model):
                raise UserError(
                    f"space {self.name}: technique {t.name} does not apply to {model_name}"
                    f" ({type(model).__name__}); use --space auto or another preset"
                )

    def epochs_fixed(self) -> Space:
        """This space with each training technique's epochs (``Technique.epochs_param``) fixed at its
        upper bound: successive halving hands out the epochs, the sampler does not search them."""
        techniques = []
        for t in self.techniques:
            key = TECHNIQUES.get(t.name).epochs_param
            params = tuple(replace(p, low=p.high) if p.name == key else p for p in t.params)
            techniques.append(replace(t, params=params))
        return replace(self, techniques=tuple(techniques))

    def epochs_bound(self) -> int | None:
        """The most training epochs this space allows (``Technique.epochs_param``); None: none trains."""
        bounds = [
            int(p.high) for t in self.techniques for p in t.params
            if p.name == TECHNIQUES.get(t.name).epochs_param
        ]
        return max(bounds, default=None)

    def baseline_params(self, prefix: str = "") -> dict[str, bool]:
        """Fixed params that switch every searchable technique off (trial 0)."""
        return {prefix + t.name: False for t in self.techniques if not t.always}

    def recipes(self, prefix: str = "") -> list[dict[str, Any]]:
        """Fixed params of each technique's canonical recipe alone (plus recovery fine-tuning for
        structural ones), moved into this space's ranges: a warm start for the sampler."""
        recovery = next((t for t in self.techniques if t.name == "distill"), None)
        out = []
        for t in self.techniques:
            cls = TECHNIQUES.get(t.name)
            if cls.recipe is None or t is recovery:
                continue
            chosen = [t] + ([recovery] if cls.needs_recovery and recovery is not None else [])
            params: dict[str, Any] = self.baseline_params(prefix)
            for tech in chosen:
                if not tech.always:
                    params[prefix + tech.name] = True
                values = TECHNIQUES.get(tech.name).recipe or {}
                params.update({
                    f"{prefix}{tech.name}.{p.name}": p.nearest(values[p.name])
                    for p in tech.params if p.name in values
                })
            out.append(params)
        return out

    def sample(self, trial: optuna.Trial, baseline: bool = False, prefix: str = "") -> Candidate:
        """Define-by-run: each switch, then the parameters of the techniques switched on."""
        steps: list[Step] = []
        for t in self.techniques:
            key = prefix + t.name
            if baseline:
                if not t.always:
                    trial.suggest_categorical(key, (False, True))
                continue
            if any(excluded(t.name, s.technique) for s in steps):
                continue  # an earlier step rules it out (``Technique.excludes``): not even offered
            if t.always or trial.suggest_categorical(key, (False, True)):
                steps.append(Step(t.name, suggest_all(t.params, trial, key)))
        return Candidate(tuple(steps))


@dataclass(frozen=True)
class JointSpace:
    """A run's space: one ``Space`` per base model.

    With one model it is that model's space, parameter names unchanged. With several, ``model`` is
    a categorical choice sampled first, and each model's parameters are prefixed ``<model>/``, so
    every architecture has its own conditional subspace in the same study.
    """

    spaces: tuple[tuple[str, Space], ...]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.spaces)

    def space(self, model: str) -> Space:
        return dict(self.spaces)[model]

    def prefix(self, model: str) -> str:
        return f"{model}/" if len(self.spaces) > 1 else ""

    def _choice(self, model: str) -> dict[str, str]:
        return {MODEL_PARAM: model} if len(self.spaces) > 1 else {}

    def sample(self, trial: optuna.Trial, baseline: bool = False) -> tuple[str, Candidate]:
        """The model and its candidate (a baseline trial's model comes from its enqueued params)."""
        if len(self.spaces) == 1:
            model = self.models[0]
        else:
            model = trial.suggest_categorical(MODEL_PARAM, self.models)
        return model, self.space(model).sample(trial, baseline=baseline, prefix=self.prefix(model))

    def epochs_fixed(self) -> JointSpace:
        """Every model's ``Space.epochs_fixed``."""
        return JointSpace(tuple((m, s.epochs_fixed()) for m, s in self.spaces))

    def baseline_params(self, model: str) -> dict[str, Any]:
        return {**self._choice(model), **self.space(model).baseline_params(self.prefix(model))}

    def recipes(self) -> list[dict[str, Any]]:
        """Each model's recipes, models interleaved so every architecture is tried early."""
        per_model = [
            [{**self._choice(m), **r} for r in s.recipes(self.prefix(m))] for m, s in self.spaces
        ]
        return [r for batch in zip_longest(*per_model) for r in batch if r is not None]

    def describe(self) -> str:
        return "\n".join(
            f"{m} -> {s.name}:\n  " + s.describe().replace("\n", "\n  ") for m, s in self.spaces
        )

    def to_mapping(self) -> dict[str, Any]:
        return {"models": {m: s.to_mapping() for m, s in self.spaces}}

    @classmethod
    def from_mapping(cls, data: Any, where: str = "space") -> JointSpace:
        if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
            raise UserError(f"{where}: expected a mapping with a 'models' mapping")
        return cls(tuple(
            (str(m), Space.from_mapping(spec, where=f"{where}: {m}")) for m, spec in data["models"].items()
        ))


def excluded(a: str, b: str) -> bool:
    """Whether techniques ``a`` and ``b`` cannot be chained (``Technique.excludes``, either way)."""
    return b in TECHNIQUES.get(a).excludes or a in TECHNIQUES.get(b).excludes


def _technique_space(name: str, spec: Any, where: str) -> TechniqueSpace:
    cls = TECHNIQUES.get(name)
    spec = {} if spec is None else spec
    if not isinstance(spec, Mapping):
        raise UserError(f"{where}: expected a mapping of parameters, got {spec!r}")
    enabled = spec.get("enabled", "search")
    if enabled not in ENABLED:
        raise UserError(f"{where}: enabled must be one of {', '.join(ENABLED)}, got {enabled!r}")
    declared = {p.name: p for p in cls.params}
    unknown = set(spec) - set(declared) - {"enabled"}
    if unknown:
        raise UserError(
            f"{where}: unknown parameter(s) {', '.join(sorted(map(str, unknown)))}"
            f" (known: {', '.join(declared)})"
        )
    params = tuple(
        p.narrow(spec[p.name], f"{where}.{p.name}") if p.name in spec else p
        for p in cls.params
    )
    return TechniqueSpace(name, enabled == "always", params)
