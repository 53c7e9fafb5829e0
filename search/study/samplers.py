"""The Optuna samplers a search can use, by name (``--sampler``)."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from search.config.run_config import RunConfig


def _seed(cfg: RunConfig) -> int:
    return cfg.seed if cfg.sampler_seed is None else cfg.sampler_seed


SAMPLERS: dict[str, Callable[[RunConfig], optuna.samplers.BaseSampler]] = {
    # multivariate TPE with grouping models the conditional (define-by-run) space jointly
    "tpe": lambda cfg: optuna.samplers.TPESampler(
        seed=_seed(cfg), multivariate=True, group=True,
        n_startup_trials=max(4, min(10, cfg.trials // 4)),
    ),
    "random": lambda cfg: optuna.samplers.RandomSampler(seed=_seed(cfg)),
    "nsga2": lambda cfg: optuna.samplers.NSGAIISampler(seed=_seed(cfg), population_size=8),
}
