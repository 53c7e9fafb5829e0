"""``edgepareto bench scaling``: trials per hour with one and two workers, and Ray's overhead.

Every setup runs the same search (a space whose trials cost about the same: pruning plus two epochs
of distillation, one thread per trial, latency measured on this machine through the device slot) as
real processes: ``edgepareto search`` alone; with one ``edgepareto worker`` beside it on the run's
SQLite storage; and ``--backend ray`` one and two trials at a time on a local Ray. Throughput is read
off the study's own timestamps (ask to tell) over the steady state, the window in which as many
trials ran at once as the setup allows, so start-up (imports, ``ray.init``) and the tail of the last
trial are reported apart.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from search.core.atomic import write_with
from search.core.errors import UserError
from search.core.layout import trial_dir

SPACE = "techniques:\n  prune: {ratio: [0.2, 0.6]}\n  distill: {enabled: always, epochs: 2}\n"
SETUPS = {  # name -> (extra search flags, extra workers, trials at once, description)
    "optuna-1": ([], 0, 1, "edgepareto search alone"),
    "optuna-2": ([], 1, 2, "search + 1 edgepareto worker"),
    "ray-1": (["--backend", "ray", "--max-concurrent", "1"], 0, 1, "--backend ray, 1 trial at a time"),
    "ray-2": (["--backend", "ray", "--max-concurrent", "2"], 0, 2, "--backend ray, 2 trials at a time"),
}


@dataclass(frozen=True)
class Throughput:
    """One setup's measurements."""

    setup: str
    trials: float  # trials done in the steady-state window (partly inside: counted pro rata)
    window_s: float
    mean_trial_s: float  # ask -> tell, as the study recorded it
    startup_s: float  # command start -> first trial start (imports, data, ray.init)

    @property
    def per_hour(self) -> float:
        return self.trials / self.window_s * 3600


def steady_window(spans: list[tuple[float, float]], parallel: int) -> tuple[float, float]:
    """From the first moment ``parallel`` trials ran at once to the last moment they did: neither the
    ramp-up (a worker still starting) nor the tail (one process waiting for another's last trial)."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running, first, last = 0, None, None
    for when, change in events:
        if running >= parallel and change < 0:
            last = when
        running += change
        if running >= parallel and first is None:
            first = when
    if first is None or last is None:
        return min(a for a, _ in spans), max(b for _, b in spans)
    return first, last


def measure(
    trials: list[optuna.trial.FrozenTrial], started: float, setup: str, parallel: int
) -> Throughput:
    """Steady-state throughput (see ``steady_window``); a trial partly inside the window counts with
    the share of its duration inside."""
    done = [t for t in trials if t.datetime_complete is not None and t.datetime_start is not None]
    spans = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in done]
    t0, end = steady_window(spans, parallel)
    inside = sum(max(0.0, min(b, end) - max(a, t0)) / (b - a) for a, b in spans if b > a)
    return Throughput(
        setup, inside, end - t0, float(np.mean([b - a for a, b in spans])),
        min(a for a, _ in spans) - started,
    )


def _search(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "search", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise UserError(f"bench scaling: {what} failed: {err.strip().splitlines()[-1] if err else ''}")


def run_setup(
    setup: str, runs: Path, space: Path, trials: int, model: str, img_size: int, epochs: int | None,
) -> Throughput:
    flags, workers, parallel, _ = SETUPS[setup]
    name = "bench-scaling-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    storage = f"sqlite:///{(runs / name / 'study.db').resolve()}"
    args = [
        "search", "--runs-dir", str(runs), "--name", name, "--trials", str(trials), "--model", model,
        "--img-size", str(img_size), "--space", str(space), "--warm-start", "off",
        "--cpus-per-trial", "1", "--threads", "1", "--sampler", "random", "--quiet", *flags,
    ]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    started = time.time()
    driver = _search(*args)
    helpers = []
    if workers:
        # join once the driver runs its first trial: the study exists, and so do its tables (two
        # processes creating the tables of a new storage at once can collide)
        while not trial_dir(runs / name, 0).is_dir():
            if driver.poll() is not None:
                _wait(driver, setup)
            time.sleep(0.2)
        helpers = [_search("worker", name, "--storage", storage, "--quiet") for _ in range(workers)]
    for proc in [driver, *helpers]:
        _wait(proc, setup)
    study = optuna.load_study(study_name=name, storage=storage)
    return measure(study.get_trials(), started, setup, parallel)


def bench_scaling(
    trials: int = 12, runs_dir: str = "runs", model: str = "resnet18", img_size: int = 16,
    epochs: int | None = None, setups: tuple[str, ...] = tuple(SETUPS), log=print,
) -> list[Throughput]:
    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    space = runs / "bench" / "scaling-space.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(SPACE)
    out = []
    for setup in setups:
        result = run_setup(setup, runs, space, trials, model, img_size, epochs)
        log(f"{setup}: {result.per_hour:.0f} trials/h ({result.trials:.1f} in {result.window_s:.1f} s)")
        out.append(result)
    table = pd.DataFrame([{**asdict(r), "per_hour": r.per_hour} for r in out])
    path = runs / "bench" / f"scaling-{dt.datetime.now():%Y%m%d-%H%M%S}.csv"
    write_with(path, lambda tmp: table.to_csv(tmp, index=False))
    log(f"saved {path}")
    return out


def format_scaling(results: list[Throughput]) -> str:
    by = {r.setup: r for r in results}
    lines = [
        f"{'setup':<10} {'what':<34} {'trials/h':>9} {'vs 1':>6} {'trial s':>8} {'start-up s':>11} "
        f"{'window':>14}"
    ]
    for r in results:
        ref = by.get(r.setup.split("-")[0] + "-1")
        ratio = f"{r.per_hour / ref.per_hour:.2f}x" if ref else "-"
        lines.append(
            f"{r.setup:<10} {SETUPS[r.setup][3]:<34} {r.per_hour:>9.0f} {ratio:>6} {r.mean_trial_s:>8.2f} "
            f"{r.startup_s:>11.1f} {r.trials:>5.1f} in {r.window_s:>6.1f} s"
        )
    one, two, ray1 = by.get("optuna-1"), by.get("optuna-2"), by.get("ray-1")
    if one and ray1:
        lines.append(
            f"Ray overhead per trial: {ray1.mean_trial_s - one.mean_trial_s:+.2f} s "
            f"({ray1.mean_trial_s:.2f} vs {one.mean_trial_s:.2f} s per trial, one at a time); "
            f"start-up {ray1.startup_s - one.startup_s:+.1f} s"
        )
    if one and two:
        lines.append(f"2 workers vs 1: {two.per_hour / one.per_hour:.2f}x (goal >= 1.7x)")
    return "\n".join(lines)
