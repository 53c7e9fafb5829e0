"""The run folder's layout: where each file of a run lives, in one place.

::

    runs/NAME/run.yaml, space.yaml, study.db        the settings, the searched space, the study
    runs/NAME/trials/NNNN/{model.onnx, params.json, metrics.json}
    runs/NAME/trials/NNNN/trial.log                 what libraries logged or printed during the trial
    runs/NAME/unreadable_images.txt                 image files of --data that could not be read
    runs/NAME/trials.csv, pareto.csv, summary.json  the results (read back by ``load_run``)
    runs/NAME/report.html                           the page
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

TRIALS_DIR = "trials"
MODEL_FILE = "model.onnx"
PARAMS_FILE = "params.json"
METRICS_FILE = "metrics.json"
TRIAL_LOG = "trial.log"
UNREADABLE_FILE = "unreadable_images.txt"
RESULT_FILES = ("pareto.csv", "trials.csv", "summary.json")
REPORT_FILE = "report.html"


def trial_name(number: int) -> str:
    """``trials/0007``: a trial's folder relative to its run folder."""
    return f"{TRIALS_DIR}/{number:04d}"


def trial_dir(run_dir: Path, number: int) -> Path:
    """The folder of trial ``number`` in ``run_dir``."""
    return Path(run_dir) / TRIALS_DIR / f"{number:04d}"


class FinishedRun(Protocol):
    """What the outputs read of a finished run (``search.front.run.Report`` is one), so that they need
    not import the front that hands runs to them."""

    run_dir: Path
    pareto: Any  # pandas DataFrames
    trials: Any
    summary: dict[str, Any]
