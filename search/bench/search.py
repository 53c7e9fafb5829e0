"""``edgepareto bench search``: the default sampler against random search, same trials and seeds;
with ``--fidelity``, the fidelities against each other on the wall clock, same time budget and seeds.

Hypervolume is the one normalised definition of ``search.front.pareto.hypervolume_curve`` (also the
report's): validation values relative to each run's baseline, accuracy drop in points (edge: the
default 5-point budget), latency and size as fractions of the baseline's (edge 1.0), so that 1.0 would
be a free, lossless, instant model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
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
from search.study.halving import RUNG_STOP_ATTR
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


@dataclass(frozen=True)
class TimedCurve:
    """A run's hypervolume against the wall clock: after each finished trial (in the order they
    finished), the seconds since its first trial started and the hypervolume so far."""

    fidelity: str
    seed: int
    seconds: tuple[float, ...]
    hv: tuple[float, ...]
    complete: int = 0
    pruned: int = 0
    kept_at_rung: int = 0  # complete trials that halving kept at a rung (fewer epochs than the budget)

    def at(self, seconds: float) -> float:
        """The hypervolume reached within ``seconds`` (0 before the first finished trial)."""
        return max((h for s, h in zip(self.seconds, self.hv) if s <= seconds), default=0.0)

    def reaches(self, target: float) -> float | None:
        """The seconds it took to reach ``target``; None when it never did."""
        return next((s for s, h in zip(self.seconds, self.hv) if h >= target - 1e-12), None)


def timed_hv(trials: Sequence[optuna.trial.FrozenTrial]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(seconds, hypervolume) after each finished trial, in finishing order, from the first trial's
    start; the same hypervolume as ``hv_of``."""
    started = [t.datetime_start for t in trials if t.datetime_start is not None]
    done = sorted((t for t in trials if t.datetime_complete is not None), key=lambda t: t.datetime_complete)
    if not started or not done:
        return (), ()
    points, baseline = objective_points(done)
    curve = hypervolume_curve(points, baseline, DEFAULT_OBJECTIVES)
    zero = min(started)
    return tuple((t.datetime_complete - zero).total_seconds() for t in done), tuple(curve)


def bench_fidelity(
    budget_s: float, fidelities: Sequence[str], seeds: int = 3, runs_dir: str = "runs",
    model: str | None = None, img_size: int | None = None, data: str | None = None,
    epochs: int | None = None,
) -> str:
    """The default search under each ``--fidelity``, ``budget_s`` seconds each (``--timeout``; the
    trial count is not the limit), sampler seeds 0..seeds-1, one after the other on the same cached
    baseline; the table of ``format_fidelity``."""
    for fidelity in fidelities:
        RunConfig(fidelity=fidelity)  # the one check (UserError), before the first run spends its budget
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    extra = {k: v for k, v in (("model", model), ("img_size", img_size), ("data", data), ("epochs", epochs))
             if v is not None}
    curves = []
    for seed in range(seeds):
        for fidelity in fidelities:
            cfg = RunConfig(
                name=f"bench-{stamp}-{fidelity}-s{seed}", runs_dir=runs_dir, trials=10_000,
                timeout=budget_s, fidelity=fidelity, sampler_seed=seed, **extra,
            )
            run_search(cfg, Progress(cfg.objectives, cfg.directions, quiet=True))
            trials = optuna.load_study(
                study_name=cfg.name, storage=Run(cfg.name, Path(runs_dir)).storage_url(cfg)
            ).get_trials()
            seconds, hv = timed_hv(trials)
            curve = TimedCurve(
                fidelity, seed, seconds, hv, complete=sum(t.state == TrialState.COMPLETE for t in trials),
                pruned=sum(t.state == TrialState.PRUNED for t in trials),
                kept_at_rung=sum(bool(t.user_attrs.get(RUNG_STOP_ATTR)) for t in trials),
            )
            curves.append(curve)
            print(f"  {fidelity} seed {seed}: hypervolume {curve.at(budget_s):.4f} ({curve.complete} "
                  f"complete, {curve.kept_at_rung} of them kept at a rung, {curve.pruned} pruned)",
                  flush=True)
    return format_fidelity(curves, budget_s)


def format_fidelity(curves: Sequence[TimedCurve], budget_s: float) -> str:
    """Per fidelity: hypervolume at half and all of the budget (mean ± std over seeds, and per seed),
    trials finished; then, per seed, the seconds each other fidelity took to reach ``off``'s final
    hypervolume of the same seed (goal: half the budget, on the mean and on most seeds)."""
    half = budget_s / 2
    fidelities = list(dict.fromkeys(c.fidelity for c in curves))
    lines = [
        f"hypervolume (normalised, higher is better) against the wall clock, {budget_s:g} s per run, "
        f"{len({c.seed for c in curves})} seeds",
        f"{'fidelity':<10} {'@' + format(half, 'g') + ' s':>16} {'@' + format(budget_s, 'g') + ' s':>16}"
        f"   per seed @{budget_s:g} s   complete (kept at a rung)/pruned per seed",
    ]
    for fidelity in fidelities:
        mine = [c for c in curves if c.fidelity == fidelity]
        at_half = np.array([c.at(half) for c in mine])
        at_end = np.array([c.at(budget_s) for c in mine])
        lines.append(
            f"{fidelity:<10} {at_half.mean():>9.4f} ± {at_half.std():.4f} {at_end.mean():>9.4f} ± "
            f"{at_end.std():.4f}   " + " ".join(f"{v:.4f}" for v in at_end)
            + "   " + " ".join(f"{c.complete} ({c.kept_at_rung})/{c.pruned}" for c in mine)
        )
    off = {c.seed: c for c in curves if c.fidelity == "off"}
    if off:
        mean_off = float(np.mean([c.at(budget_s) for c in off.values()]))
        for fidelity in (f for f in fidelities if f != "off"):
            mine = [c for c in curves if c.fidelity == fidelity and c.seed in off]
            times = [c.reaches(off[c.seed].at(budget_s)) for c in mine]
            within = sum(t is not None and t <= half for t in times)
            mean_half = float(np.mean([c.at(half) for c in mine])) if mine else 0.0
            lines.append(
                f"{fidelity}: seconds to reach off's final hypervolume of the same seed: "
                + ", ".join("never" if t is None else f"{t:.0f}" for t in times)
                + f" ({within} of {len(times)} within {half:g} s); mean at {half:g} s {mean_half:.4f} vs "
                f"off's mean final {mean_off:.4f} (goal: at least, and within half on most seeds)"
            )
    return "\n".join(lines)
