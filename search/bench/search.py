"""``edgepareto bench search``: the default sampler against random search, same trials and seeds.

Hypervolume is computed on validation values normalised by each run's baseline: accuracy drop in
points (reference: the default 5-point budget), latency and size as fractions of the baseline
(reference 1.0), divided by the reference box so that 1.0 would be a free, lossless, instant model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from search.config.run_config import RunConfig
from search.front.pareto import hypervolume
from search.study.constraints import baseline_trial, is_feasible
from search.study.engine import Run, run_search
from search.study.progress import Progress

REFERENCE = (5.0, 1.0, 1.0)  # accuracy drop (points), latency / baseline, size / baseline
DIRECTIONS = ("minimize", "minimize", "minimize")


@dataclass(frozen=True)
class Curve:
    sampler: str
    seed: int
    hv: tuple[float, ...]  # normalised hypervolume after each trial


def normalised_points(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[float, float, float]]:
    """Per trial (in order; None for failed/infeasible ones): drop, latency ratio, size ratio."""
    b = baseline_trial(trials).user_attrs
    points = []
    for t in trials:
        a = t.user_attrs
        ok = t.state == TrialState.COMPLETE and is_feasible(t)
        points.append(
            ((b["accuracy"] - a["accuracy"]) * 100, a["latency_ms"] / b["latency_ms"],
             a["size_mb"] / b["size_mb"]) if ok else None
        )
    return points


def hv_curve(points: list) -> tuple[float, ...]:
    volume = float(np.prod(REFERENCE))
    out, seen = [], []
    for p in points:
        if p is not None:
            seen.append(p)
        out.append(hypervolume(seen, DIRECTIONS, REFERENCE) / volume)
    return tuple(out)


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
            curve = Curve(sampler, seed, hv_curve(normalised_points(study.get_trials())))
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
