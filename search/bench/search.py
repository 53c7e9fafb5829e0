"""``edgepareto bench search``: the default sampler against random search, same trials and seeds.

Hypervolume is the one normalised definition of ``search.front.pareto.hypervolume_curve`` (also the
report's): validation values relative to each run's baseline, accuracy drop in points (edge: the
default 5-point budget), latency and size as fractions of the baseline's (edge 1.0), so that 1.0 would
be a free, lossless, instant model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from search.config.objectives import DEFAULT_OBJECTIVES, OBJECTIVES
from search.config.run_config import RunConfig
from search.front.pareto import hypervolume_curve
from search.study.constraints import baseline_trial, is_feasible
from search.study.engine import Run, run_search
from search.study.progress import Progress


@dataclass(frozen=True)
class Curve:
    sampler: str
    seed: int
    hv: tuple[float, ...]  # normalised hypervolume after each trial


def objective_points(
    trials: list[optuna.trial.FrozenTrial], objectives: tuple[str, ...] = DEFAULT_OBJECTIVES,
) -> tuple[list[dict[str, float] | None], dict[str, float]]:
    """Per trial (in order; None for failed or infeasible ones) its validation values by objective,
    and the baseline's."""
    def values(t: optuna.trial.FrozenTrial) -> dict[str, float]:
        return {n: float(t.user_attrs[OBJECTIVES[n].attr]) for n in objectives}

    points = [
        values(t) if t.state == TrialState.COMPLETE and is_feasible(t) else None for t in trials
    ]
    return points, values(baseline_trial(trials))


def hv_of(trials: list[optuna.trial.FrozenTrial]) -> tuple[float, ...]:
    """The run's normalised hypervolume after each trial (``search.front.pareto.hypervolume_curve``)."""
    points, baseline = objective_points(trials)
    return tuple(hypervolume_curve(points, baseline, DEFAULT_OBJECTIVES))


def bench_search(
    trials: int = 20, seeds: int = 3, runs_dir: str = "runs", model: str | None = None,
    img_size: int | None = None,
) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    extra = {k: v for k, v in (("model", model), ("img_size", img_size)) if v is not None}
    curves = []
    for seed in range(seeds):
        for sampler in ("tpe", "random"):
            cfg = RunConfig(  # the default search against plain random search
                name=f"bench-{stamp}-{sampler}-s{seed}", runs_dir=runs_dir, trials=trials,
                sampler=sampler, sampler_seed=seed, warm_start=sampler == "tpe", **extra,
            )
            run_search(cfg, Progress(cfg.objectives, cfg.directions, quiet=True))
            study = optuna.load_study(
                study_name=cfg.name, storage=Run(cfg.name, Path(runs_dir)).storage_url(cfg)
            )
            curve = Curve(sampler, seed, hv_of(study.get_trials()))
            curves.append(curve)
            print(f"  {sampler} seed {seed}: hypervolume {curve.hv[-1]:.4f}", flush=True)
    return format_bench(curves, trials)


def format_bench(curves: list[Curve], trials: int) -> str:
    half = trials // 2
    lines = [
        f"hypervolume (normalised, higher is better), {trials} trials, "
        f"{len({c.seed for c in curves})} seeds",
        f"{'sampler':<8} {'@' + str(half):>16} {'@' + str(trials):>16}   per seed @{trials}",
    ]
    for sampler in ("tpe", "random"):
        mine = [c for c in curves if c.sampler == sampler]
        at_half = np.array([c.hv[half - 1] for c in mine])
        at_end = np.array([c.hv[-1] for c in mine])
        lines.append(
            f"{sampler:<8} {at_half.mean():>9.4f} ± {at_half.std():.4f} "
            f"{at_end.mean():>9.4f} ± {at_end.std():.4f}   "
            + " ".join(f"{v:.4f}" for v in at_end)
        )
    random_end = np.mean([c.hv[-1] for c in curves if c.sampler == "random"])
    reach = []
    for c in (c for c in curves if c.sampler == "tpe"):
        k = next((i + 1 for i, v in enumerate(c.hv) if v >= random_end), None)
        reach.append("never" if k is None else str(k))
    lines.append(
        f"trials the default (tpe) needs to reach random search's mean final hypervolume "
        f"{random_end:.4f}: {', '.join(reach)} (goal: <= {half})"
    )
    return "\n".join(lines)
