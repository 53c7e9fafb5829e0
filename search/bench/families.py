"""``edgepareto bench families``: a search per model family on the digits, one row per model.

Each model runs the default search (``--space auto``, its family's input size and training defaults:
``search.task.families``) with the same trial budget and seed. A row gives the baseline's test
accuracy, the best speed-up and the best size ratio among the Pareto models within 1 point of it
(test split), the median trial time (as ``edgepareto show`` prints it), the failed trials by reason,
and, measured apart from the search on the same cached baseline, the validation accuracy after
pruning by 30% and 50% with BatchNorm recalibration alone (no fine-tuning), with the family's space
setting (the residual stream kept where it searches that) and the best of its importance criteria.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from search.config.run_config import RunConfig
from search.core.atomic import write_json

#: The families of the issue's table, each at its family's default size.
MODELS = (
    "resnet18", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "convnext_atto",
    "deit_tiny_patch16_224",
)
#: "Within 1 point": test accuracy at most this many points below the baseline's.
WITHIN_PT = 1.0
RECALIBRATION_RATIOS = (0.3, 0.5)


@dataclass(frozen=True)
class FamilyRow:
    """One model's line of the table."""

    model: str
    family: str
    img_size: int
    baseline_test: float
    best_speedup: float
    speedup_techniques: str
    best_compression: float
    compression_techniques: str
    median_trial_s: float
    trials: int  # counted against the budget (search.front.counts)
    failures: dict[str, int] = field(default_factory=dict)
    over_budget: int = 0
    recalibrated: dict[str, float] = field(default_factory=dict)  # "30%": val accuracy
    recalibrated_with: str = ""  # the importance criterion of ``recalibrated``


def best_within(pareto: pd.DataFrame, column: str, points: float = WITHIN_PT) -> tuple[float, str]:
    """The largest ``column`` (``speedup``, ``compression``) among the Pareto models whose test
    accuracy is at most ``points`` below the baseline's, and its techniques (1.0 and ``baseline``
    when only the baseline is)."""
    near = pareto[pareto["accuracy_drop_pt"] <= points]
    if near.empty:
        return 1.0, "baseline"
    best = near.loc[near[column].idxmax()]
    return float(best[column]), str(best["techniques"])


def over_budget(trials: pd.DataFrame) -> int:
    """Completed trials outside the run's budgets (the accuracy-drop budget, by default)."""
    done = trials[trials["state"].astype(str) == "COMPLETE"]
    return int((done.reindex(columns=["feasible"])["feasible"] == False).sum())  # noqa: E712


def median_trial_s(trials: pd.DataFrame) -> float:
    """The median time of the completed trials that built a candidate, as ``edgepareto show`` gives
    it (``search.front.run.built_stage_seconds``: stage times summed; duplicates left out)."""
    from search.front.run import built_stage_seconds

    seconds = built_stage_seconds(trials).sum(axis=1)
    return float(seconds.median()) if len(seconds) else float("nan")


def family_row(run_dir: Path, recalibrated: dict[str, float], recalibrated_with: str = "") -> FamilyRow:
    """A finished run's row (``recalibrated`` measured apart, with ``recalibrated_with``)."""
    from search.front.run import load_run
    from search.task.families import family_of

    run = load_run(run_dir)
    cfg = run.config
    model = cfg.models[0]
    speedup, fast = best_within(run.pareto, "speedup")
    compression, small = best_within(run.pareto, "compression")
    size = run.summary["preprocessing"]["input_shape"][-1]
    counts = run.counts()  # the counts show and the service give: failures by reason, counted trials
    return FamilyRow(
        model, family_of(model).name, int(size), float(run.pareto.iloc[0]["test_accuracy"]),
        speedup, fast, compression, small, median_trial_s(run.trials), counts.counted,
        counts.failed_by_reason, over_budget(run.trials), recalibrated, recalibrated_with,
    )


def recalibration_accuracy(cfg: RunConfig, runs_dir: Path) -> tuple[dict[str, float], str]:
    """Validation accuracy (torch) of the cached baseline pruned by each of ``RECALIBRATION_RATIOS``
    with BatchNorm recalibration alone: the family's pruning technique at its space's setting, with
    each importance criterion the space searches; the best criterion's (highest mean) and its name."""
    from search.candidate.build import RECALIBRATION_IMAGES
    from search.task.baseline import prepare
    from search.task.families import resolve_space
    from spaces import TECHNIQUES, Context, Space
    from spaces.train import accuracy, recalibrate_batchnorm
    from spaces.vit import is_vit

    name = cfg.models[0]
    task = prepare(cfg, name, runs_dir, lambda _m: None, lambda _m: None)
    vit = is_vit(task.base)
    space = Space.load(resolve_space(cfg.space, name, vit))
    tech = next(t for t in space.techniques if t.name in ("prune", "vit_prune"))
    choices = {p.name: p.choices for p in tech.params if hasattr(p, "choices")}
    found: dict[str, dict[str, float]] = {}
    for importance in choices.get("importance", ("l2",)):
        out = found.setdefault(importance, {})
        for ratio in RECALIBRATION_RATIOS:
            if tech.name == "vit_prune":
                setting = {"head_ratio": ratio, "mlp_ratio": ratio, "importance": importance}
            else:
                setting = {"ratio": ratio, "importance": importance, "scope": "uniform",
                           "residual": choices["residual"][0]}
            model = copy.deepcopy(task.base)
            model = TECHNIQUES.get(tech.name)().apply(model, setting, Context(train=task.data.train))
            recalibrate_batchnorm(model, task.data.train, RECALIBRATION_IMAGES)
            out[f"{ratio:.0%}"] = accuracy(model, task.data.val)
    best = max(found, key=lambda k: sum(found[k].values()))
    return found[best], best


def bench_families(
    trials: int = 20, runs_dir: str = "runs", models: Sequence[str] = MODELS, seed: int = 0,
    log: Callable[[str], None] = print, img_size: int | None = None, epochs: int | None = None,
) -> list[FamilyRow]:
    """One search per model (``--trials`` each, the baseline included), then its row. ``img_size``
    and ``epochs`` (None: each family's) are for quick checks; the table uses the families' own."""
    from search.study.engine import run_search
    from search.study.progress import Progress

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    rows = []
    for model in models:
        cfg = RunConfig(name=f"bench-families-{stamp}-{model}", runs_dir=runs_dir, model=model,
                        trials=trials, seed=seed, img_size=img_size, epochs=epochs)
        log(f"{model}: searching ({trials} trials)")
        report = run_search(cfg, Progress(cfg.objectives, cfg.directions, quiet=True))
        row = family_row(report.run_dir, *recalibration_accuracy(cfg, Path(runs_dir)))
        rows.append(row)
        write_json(Path(runs_dir) / f"bench-families-{stamp}.json", [asdict(r) for r in rows])
        log(format_families([row]).splitlines()[-1])
    return rows


def _recalibrated_text(row: FamilyRow) -> str:
    """``95.6%/62.5% (taylor)``, or ``-`` where nothing was measured."""
    if not row.recalibrated:
        return "-"
    values = "/".join(f"{v:.1%}" for v in row.recalibrated.values())
    return f"{values} ({row.recalibrated_with})" if row.recalibrated_with else values


def format_families(rows: Sequence[FamilyRow]) -> str:
    """The table: one row per model."""
    table = pd.DataFrame([{
        "model": r.model,
        "size": f"{r.img_size} px",
        "baseline test": f"{r.baseline_test:.1%}",
        f"speed-up ≤{WITHIN_PT:g} pt": f"{r.best_speedup:.2f}x",
        "with": r.speedup_techniques,
        f"size ratio ≤{WITHIN_PT:g} pt": f"{r.best_compression:.1f}x",
        "median trial": f"{r.median_trial_s:.0f} s",
        "failed": ", ".join(f"{n} {k}" for k, n in r.failures.items()) or "0",
        "over budget": r.over_budget,
        "BN-recal only 30%/50%": _recalibrated_text(r),
    } for r in rows])
    return table.to_string(index=False)
