"""The Optuna samplers a search can use, by name (``--sampler``): one registry, read by the config's
validation, the Optuna loop, workers and the Ray backend.

A factory takes the sampler's seed and the run's trial budget. Optuna is imported when a sampler is
built, so validating a config stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from search.core.registry import Registry

if TYPE_CHECKING:
    import optuna

SamplerFactory = Callable[[int, int], "optuna.samplers.BaseSampler"]
SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


@SAMPLERS.register("tpe")
def tpe(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """Multivariate TPE with grouping: models the conditional (define-by-run) space jointly."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, n_startup_trials=max(4, min(10, trials // 4)),
    )


@SAMPLERS.register("random")
def random(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """Uniform random search: the baseline every other sampler must beat (``edgepareto bench search``)."""
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("nsga2")
def nsga2(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """NSGA-II with a small population, so that a short search still sees several generations."""
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)


def create_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` (a ``UserError`` naming the known ones otherwise)."""
    return SAMPLERS.get(name)(seed, trials)
