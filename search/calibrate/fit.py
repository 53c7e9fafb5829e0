"""``edgepareto calibrate`` and ``edgepareto bench predictor``: fit and check a latency predictor.

Both sample diverse candidates (``search.calibrate.candidates``), time them on the device side by side
(interleaved passes, so a slow spell of a shared machine hits every model alike), and analyse their
graphs. ``calibrate`` cross-validates the predictor models, fits the chosen one on every sample and
stores it under ``runs/targets/<target>/``; ``bench predictor`` fits on one set of candidates and
scores a held-out set, next to the FLOPs-proportional baseline and the uncalibrated prior.
"""

from __future__ import annotations

import datetime as dt
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from search.calibrate.candidates import CandidateFile, sample_candidates
from search.core.atomic import write_with
from search.core.errors import UserError
from targets.base import Target
from targets.graph import analyze
from targets.latency import make_measurer, new_calibration_path
from targets.predictor import (
    FEATURES,
    MODELS,
    Calibration,
    Score,
    fit_calibration,
    graph_features,
    score,
    stack,
)
from targets.profile import Profile, find_profile, predict_seconds, shipped_profiles

#: Base models sampled by default: a CNN, a depthwise-separable CNN and a ViT.
DEFAULT_MODELS = ("resnet18", "mobilenetv3_small_100", "vit_tiny_patch16_224")
#: Interleaved timing passes, and timed runs per pass (after the target's warm-up).
PASSES = 10
MIN_SAMPLES = 10
BURST = 10
#: The analytic prior needs a profile; ``host`` and bare remotes use this one (a generic Arm core).
FALLBACK_PROFILE = "arm-a53-1core"


@dataclass(frozen=True)
class Samples:
    """Measured candidates: features, analytic prior, measured seconds, and labels."""

    x: np.ndarray
    prior: np.ndarray
    y: np.ndarray
    frame: pd.DataFrame


def measuring_target(
    target: str, agent: str | None, threads: int, repeats: int, ca_file: str | None = None,
) -> Target:
    """What times the candidates: the target itself, or the agent on a profile's device."""
    measurer = make_measurer(target, find_profile(target), agent, threads, repeats, ca_file)
    if measurer is None:
        raise UserError(
            f"calibrating {target} needs measurements on the device: run 'edgepareto agent' there "
            "and pass --agent http://DEVICE:8765"
        )
    return measurer


def measure_samples(
    files: Sequence[CandidateFile], measurer: Target, profile: Profile, passes: int = PASSES,
    log: Callable[[str], None] = lambda _m: None,
) -> Samples:
    """Analyse every file, then time them all in ``passes`` interleaved passes of short bursts.

    A model's latency is its fastest run over all passes: on a shared machine the noise only ever
    adds time, and it comes in spells; the best of bursts spread over minutes is what the model
    costs on a quiet device (measured here: two such timings of the same 60 models agree within
    ±10% for 97% of them, against 73% for one median of 100 back-to-back runs).
    """
    costs = [analyze(f.path, batch=f.input_shape[0]) for f in files]
    times = np.empty((passes, len(files)))
    for p in range(passes):
        log(f"timing pass {p + 1}/{passes} over {len(files)} models")
        for i, f in enumerate(files):
            latency = measurer.latency(f.path, f.input_shape)
            times[p, i] = (latency.min_ms if latency.min_ms is not None else latency.median_ms) / 1e3
    y = times.min(axis=0)
    prior = np.array([predict_seconds(c, profile) for c in costs])
    frame = pd.DataFrame({
        "model": [f.model for f in files], "techniques": [f.techniques for f in files],
        "measured_ms": y * 1e3, "spread": (np.median(times, 0) - y) / y,
        "macs": [c.macs for c in costs], "prior_ms": prior * 1e3,
    })
    x = stack([graph_features(f.path, f.input_shape[0]) for f in files])
    return Samples(x, prior, y, pd.concat([frame, pd.DataFrame(x, columns=FEATURES)], axis=1))


def collect(
    target: str, agent: str | None, count: int, models: Sequence[str], img_size: int, threads: int,
    repeats: int, seed: int, log: Callable[[str], None], ca_file: str | None = None,
) -> Samples:
    measurer = measuring_target(target, agent, threads, repeats, ca_file)
    profile = find_profile(target) or shipped_profiles()[FALLBACK_PROFILE]
    with tempfile.TemporaryDirectory(prefix="edgepareto-calibrate-") as tmp:
        files = []
        for f in sample_candidates(models, img_size, count, Path(tmp), seed=seed, log=log):
            files.append(f)
            if len(files) % 10 == 0:
                log(f"built {len(files)}/{count} candidates")
        return measure_samples(files, measurer, profile, log=log)


def calibrate(
    target: str, agent: str | None = None, samples: int = 150, models: Sequence[str] = DEFAULT_MODELS,
    img_size: int = 32, threads: int = 1, repeats: int = BURST, runs_root: Path = Path("runs"), seed: int = 0,
    log: Callable[[str], None] = lambda _m: None, ca_file: str | None = None,
) -> tuple[Calibration, Path]:
    """Sample, measure, cross-validate, fit, store. Returns the calibration and where it was written."""
    if samples < MIN_SAMPLES:
        raise UserError(f"--samples must be at least {MIN_SAMPLES} (5-fold cross-validation)")
    data = collect(target, agent, samples, models, img_size, threads, repeats, seed, log, ca_file)
    calibration = fit_calibration(
        data.x, data.prior, data.y, target=target, threads=threads,
        created=dt.datetime.now().isoformat(timespec="seconds"), device=_device(target, agent),
    )
    path = new_calibration_path(runs_root, target, threads)
    calibration.save(path)
    write_with(path.with_suffix(".samples.csv"), lambda tmp: data.frame.to_csv(tmp, index=False))
    return calibration, path


def format_calibration(calibration: Calibration, path: Path) -> str:
    lines = [
        f"calibration of {calibration.target} ({calibration.threads} thread(s)) on "
        f"{calibration.samples} measured models, 5-fold cross-validation:",
    ]
    for name, s in calibration.cv.items():
        mark = "  <- chosen" if name == calibration.model else ""
        lines.append(f"  {name:<14} {Score(**s)}{mark}")
    lines.append(f"written to {path} (the newest calibration of a target is the one used)")
    return "\n".join(lines)


def bench_predictor(
    target: str = "host", agent: str | None = None, train: int = 150, held_out: int = 60,
    models: Sequence[str] = DEFAULT_MODELS, img_size: int = 32, threads: int = 1, repeats: int = BURST,
    save_to: Path | None = None, log: Callable[[str], None] = lambda _m: None, ca_file: str | None = None,
) -> pd.DataFrame:
    """Fit every predictor model on ``train`` candidates, score it on ``held_out`` other ones
    (sampled with another seed), all timed in the same interleaved passes."""
    data = collect(target, agent, train + held_out, models, img_size, threads, repeats, 0, log, ca_file)
    order = np.random.default_rng(1).permutation(len(data.y))
    fit_idx, test_idx = order[:train], order[train:]
    rows = []
    for name, fit in MODELS.items():
        predict = fit(data.x[fit_idx], data.prior[fit_idx], data.y[fit_idx])
        s = score(predict(data.x[test_idx], data.prior[test_idx]), data.y[test_idx])
        rows.append({"predictor": name, "within_10pct": s.within, "mape_pct": s.mape, "held_out": s.count})
    s = score(data.prior[test_idx], data.y[test_idx])
    rows.append({"predictor": "prior (uncalibrated)", "within_10pct": s.within, "mape_pct": s.mape,
                 "held_out": s.count})
    table = pd.DataFrame(rows)
    if save_to is not None:  # every sample, its split and features: the numbers behind the table
        frame = data.frame.assign(split="fit")
        frame.loc[frame.index[test_idx], "split"] = "held-out"
        save_to.parent.mkdir(parents=True, exist_ok=True)
        write_with(save_to, lambda tmp: frame.to_csv(tmp, index=False))
        table.attrs["saved"] = str(save_to)
    held = data.frame.iloc[test_idx]
    table.attrs["mix"] = _mix(held)
    table.attrs["spread"] = float(np.median(held["spread"]))
    return table


def _mix(frame: pd.DataFrame) -> str:
    t = frame["techniques"]
    parts = {
        "CNN": int((~frame["model"].str.startswith(("vit", "deit"))).sum()),
        "ViT": int(frame["model"].str.startswith(("vit", "deit")).sum()),
        "int8": int(t.str.contains("int8").sum()),
        "fp16": int(t.str.contains("fp16").sum()),
        "pruned": int(t.str.contains("prune").sum()),
        "low-rank": int(t.str.contains("lowrank").sum()),
        "token-merged": int(t.str.contains("tokens").sum()),
    }
    return ", ".join(f"{k} {v}" for k, v in parts.items())


def format_bench(table: pd.DataFrame) -> str:
    text = table.to_string(index=False, formatters={
        "within_10pct": "{:.1%}".format, "mape_pct": "{:.1f}%".format,
    })
    return (
        f"{text}\nheld-out mix: {table.attrs.get('mix', '')}\n"
        f"median gap between a model's median pass and its fastest run: {table.attrs.get('spread', 0):.1%}"
        + (f"\nsamples: {table.attrs['saved']}" if "saved" in table.attrs else "")
    )


def _device(target: str, agent: str | None) -> str:
    if agent or target.startswith("remote:"):
        return agent or target
    return f"{platform.node()} {platform.machine()} {platform.processor()}".strip()
