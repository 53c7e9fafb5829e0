"""Typed search parameters. A technique's space is a tuple of these, declared beside its code.

Each parameter knows its full legal domain, can be narrowed by a space file (a sub-range, a subset of
choices, or one fixed value) and suggests itself to an Optuna trial. ``when`` makes a parameter
conditional on an earlier one of the same technique (define-by-run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import optuna

from search.core.errors import UserError

Condition = tuple[str, tuple[Any, ...]]


def _active(when: Condition | None, chosen: Mapping[str, Any]) -> bool:
    return when is None or chosen.get(when[0]) in when[1]


@dataclass(frozen=True)
class FloatParam:
    """A float in ``[low, high]``."""

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: Condition | None = None

    def narrow(self, spec: Any, where: str) -> FloatParam:
        low, high = _range(spec, where)
        for v in (low, high):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"{where}: expected a number or [low, high], got {spec!r}")
            if not self.low <= v <= self.high:
                raise UserError(f"{where}: {v} is out of range [{self.low}, {self.high}]")
        return replace(self, low=float(low), high=float(high))

    def suggest(self, trial: optuna.Trial, key: str) -> float:
        return trial.suggest_float(key, self.low, self.high, log=self.log, step=self.step)

    def describe(self) -> str:
        return f"{self.low:g}" if self.low == self.high else f"[{self.low:g}, {self.high:g}]"

    def nearest(self, value: Any) -> float:
        return min(max(float(value), self.low), self.high)


@dataclass(frozen=True)
class IntParam:
    """An integer in ``[low, high]``."""

    name: str
    low: int
    high: int
    when: Condition | None = None

    def narrow(self, spec: Any, where: str) -> IntParam:
        low, high = _range(spec, where)
        for v in (low, high):
            if isinstance(v, bool) or not isinstance(v, int):
                raise UserError(f"{where}: expected an integer or [low, high], got {spec!r}")
            if not self.low <= v <= self.high:
                raise UserError(f"{where}: {v} is out of range [{self.low}, {self.high}]")
        return replace(self, low=int(low), high=int(high))

    def suggest(self, trial: optuna.Trial, key: str) -> int:
        return trial.suggest_int(key, self.low, self.high)

    def describe(self) -> str:
        return str(self.low) if self.low == self.high else f"[{self.low}, {self.high}]"

    def nearest(self, value: Any) -> int:
        return min(max(int(value), self.low), self.high)


@dataclass(frozen=True)
class CategoricalParam:
    """One of ``choices``."""

    name: str
    choices: tuple[Any, ...]
    when: Condition | None = None

    def narrow(self, spec: Any, where: str) -> CategoricalParam:
        values = list(spec) if isinstance(spec, (list, tuple)) else [spec]
        if not values:
            raise UserError(f"{where}: needs at least one choice")
        for v in values:
            if v not in self.choices or type(v) is not type(self.choices[0]):
                raise UserError(
                    f"{where}: {v!r} is not one of {', '.join(map(repr, self.choices))}"
                )
        return replace(self, choices=tuple(values))

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        return trial.suggest_categorical(key, self.choices)

    def describe(self) -> str:
        return repr(self.choices[0]) if len(self.choices) == 1 else repr(list(self.choices))

    def nearest(self, value: Any) -> Any:
        return value if value in self.choices else self.choices[0]


Param = FloatParam | IntParam | CategoricalParam


def _range(spec: Any, where: str) -> tuple[Any, Any]:
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise UserError(f"{where}: a range is [low, high], got {spec!r}")
        low, high = spec
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
            raise UserError(f"{where}: low {low} is above high {high}")
        return low, high
    return spec, spec


def suggest_all(
    params: tuple[Param, ...], trial: optuna.Trial, prefix: str
) -> dict[str, Any]:
    """Suggest each active parameter in order; inactive conditional ones are left out."""
    chosen: dict[str, Any] = {}
    for p in params:
        if _active(p.when, chosen):
            chosen[p.name] = p.suggest(trial, f"{prefix}.{p.name}")
    return chosen
