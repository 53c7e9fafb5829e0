"""``edgepareto bench scaling``: trials per hour with one and two workers, and Ray's overhead.

Every setup runs the same search (a space whose trials cost about the same: pruning plus two epochs
of distillation, one thread per trial, latency measured on this machine through the device slot) as
real processes: ``edgepareto search`` alone; with one ``edgepareto worker`` beside it on the run's
SQLite storage; and ``--backend ray`` one and two trials at a time on a local Ray. Throughput is read
off the study's own timestamps over the steady state: from the moment the last process started its
first trial to the last trial's end, so start-up (imports, ``ray.init``) is reported apart.
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

from search.atomic import write_with
from search.cluster import OWNER_ATTR
from search.errors import UserError

SPACE = "techniques:\n  prune: {ratio: [0.2, 0.6]}\n  distill: {enabled: always, epochs: 2}\n"
SETUPS = {  # name -> (extra search flags, extra workers, description)
    "optuna-1": ([], 0, "edgepareto search alone"),
    "optuna-2": ([], 1, "search + 1 edgepareto worker"),
    "ray-1": (["--backend", "ray", "--max-concurrent", "1"], 0, "--backend ray, 1 trial at a time"),
    "ray-2": (["--backend", "ray", "--max-concurrent", "2"], 0, "--backend ray, 2 trials at a time"),
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


def measure(trials: list[optuna.trial.FrozenTrial], started: float, setup: str) -> Throughput:
    """Throughput over the window in which every process that ran trials was running them: each
    trial counts with the share of its duration that lies inside the window."""
    done = [t for t in trials if t.datetime_complete is not None and t.datetime_start is not None]
    spans = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in done]
    firsts: dict[str, float] = {}
    for t, (start, _) in zip(done, spans):
        who = t.user_attrs.get(OWNER_ATTR, "")
        firsts[who] = min(firsts.get(who, np.inf), start)
    t0, end = max(firsts.values()), max(stop for _, stop in spans)
    inside = sum((min(stop, end) - max(start, t0)) / (stop - start) for start, stop in spans if stop > t0)
    return Throughput(
        setup, inside, end - t0, float(np.mean([b - a for a, b in spans])), min(firsts.values()) - started
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
    flags, workers, _ = SETUPS[setup]
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
        while not (runs / name / "study.db").is_file():  # the driver creates the study, then they join
            if driver.poll() is not None:
                _wait(driver, setup)
            time.sleep(0.2)
        helpers = [_search("worker", name, "--storage", storage, "--quiet") for _ in range(workers)]
    for proc in [driver, *helpers]:
        _wait(proc, setup)
    study = optuna.load_study(study_name=name, storage=storage)
    return measure(study.get_trials(), started, setup)


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
            f"{r.setup:<10} {SETUPS[r.setup][2]:<34} {r.per_hour:>9.0f} {ratio:>6} {r.mean_trial_s:>8.2f} "
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
