"""A finished run read back from its folder: ``Report`` and ``load_run``.

Only pandas and json: reading ``pareto.csv``, ``trials.csv`` and ``summary.json`` never imports torch,
timm or onnxruntime. Exporting and writing the report import their modules on first use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from search.config.run_config import RunConfig
from search.core.cells import latency_label
from search.core.errors import UserError
from search.core.layout import RESULT_FILES
from search.front.counts import TrialCounts, frame_counts
from search.front.trials import stage_seconds, stage_shares
from search.outputs.selection import Budget, Selection, select


@dataclass(frozen=True)
class Report:
    """What a finished search hands back."""

    run_dir: Path
    pareto: pd.DataFrame
    trials: pd.DataFrame
    summary: dict[str, Any]

    def table(self) -> str:
        return format_table(self.pareto)

    def counts(self) -> TrialCounts:
        """The run's trials against its budget (the numbers ``show``, the service and the report give)."""
        return frame_counts(self.trials, int(self.summary.get("config", {}).get("trials", len(self.trials))))

    def time_per_stage(self) -> str | None:
        """Where the trials' time went, as ``show`` prints it (see :func:`time_per_stage`)."""
        return time_per_stage(self.trials)

    @property
    def config(self) -> RunConfig:
        """The run's resolved settings (``run.yaml``)."""
        return RunConfig.from_dict(self.summary["config"])

    def select(
        self, max_latency_ms: float | None = None, max_size_mb: float | None = None,
        min_accuracy: float | None = None, prefer: str = "accuracy",
    ) -> Selection:
        """The Pareto model that fits the budget (``edgepareto select``); see ``search.outputs.selection``."""
        return select(self.pareto, Budget(max_latency_ms, max_size_mb, min_accuracy), prefer)

    def export(self, trial: int, to: str | Path) -> Path:
        """Write trial ``trial`` as a deployable bundle (``edgepareto export``)."""
        from search.outputs.export import export_trial

        return export_trial(self, trial, Path(to))

    def write_report(self) -> Path:
        """(Re)write ``report.html`` (``edgepareto report``)."""
        from search.outputs.report import write_report

        return write_report(self)


def format_table(pareto: pd.DataFrame) -> str:
    """The readable table printed at the end of a search and by ``edgepareto show``."""
    view = pd.DataFrame({
        "trial": pareto["trial"],
        "role": pareto["role"],
        "techniques": pareto["techniques"],
        "test acc": pareto["test_accuracy"].map("{:.4f}".format),
        "drop pt": pareto["accuracy_drop_pt"].map("{:+.2f}".format),
        "latency ms": pareto["latency_ms"].map("{:.3f}".format),
        "speed-up": pareto["speedup"].map("{:.2f}x".format),
        "size MB": pareto["size_mb"].map("{:.3f}".format),
        "compression": pareto["compression"].map("{:.1f}x".format),
        "model.onnx": pareto["path"],
    })
    if "model" in pareto and pareto["model"].nunique() > 1:  # several base models in one study
        view.insert(1, "model", pareto["model"])
    if "latency_source" in pareto and (pareto["latency_source"] != "measured").any():
        errors = pareto.get("latency_error_pct", [None] * len(pareto))
        view.insert(view.columns.get_loc("speed-up"), "latency from", [
            latency_label(src, err) for src, err in zip(pareto["latency_source"], errors)
        ])
    return view.to_string(index=False)


def built_stage_seconds(trials: pd.DataFrame) -> pd.DataFrame:
    """Seconds per stage (columns) of the completed trials that built a candidate (duplicates, which
    reuse an earlier trial's result, left out); a row's sum is that trial's time."""
    original = trials.reindex(columns=["duplicate_of"])["duplicate_of"].isna()
    return stage_seconds(trials[(trials["state"].astype(str) == "COMPLETE") & original])


def time_per_stage(trials: pd.DataFrame) -> str | None:
    """``time per stage: train 61%, accuracy 18%, ... (median trial 12.3 s)``: the stages' shares of the
    time of the completed, non-duplicate trials that recorded stage times, largest first, 0% left out;
    None when none did (a run from before stage times)."""
    seconds = built_stage_seconds(trials)
    shares = stage_shares(seconds.sum().to_dict())
    parts = [f"{s} {p:.0%}" for s, p in sorted(shares.items(), key=lambda sp: -sp[1]) if f"{p:.0%}" != "0%"]
    if not parts:
        return None
    return f"time per stage: {', '.join(parts)} (median trial {seconds.sum(axis=1).median():.1f} s)"


def load_run(path: str | Path) -> Report:
    """A finished run, read back from its folder: ``load_run("runs/NAME").pareto`` is its front."""
    return load_report(Path(path))


def load_report(run_dir: Path) -> Report:
    """Read a finished run back from its files (``edgepareto show``)."""
    files = [run_dir / n for n in RESULT_FILES]
    if not run_dir.is_dir():
        raise UserError(f"no run at {run_dir}")
    if not all(f.is_file() for f in files):
        raise UserError(
            f"run {run_dir.name} has no results yet; finish it with --resume {run_dir.name}"
        )
    pareto, trials = pd.read_csv(files[0]), pd.read_csv(files[1])
    if {"trial", "artifact"} <= set(trials) and "path" in pareto:  # paths from where the run is now
        artifacts = dict(zip(trials["trial"], trials["artifact"]))
        pareto["path"] = [
            str(run_dir / artifacts[t]) if isinstance(artifacts.get(t), str) else p
            for t, p in zip(pareto["trial"], pareto["path"])
        ]
    return Report(run_dir, pareto, trials, json.loads(files[2].read_text()))
