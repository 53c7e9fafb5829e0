"""Library chatter goes to the trial's log file, not the console: a real trial of a ConvNeXt whose static
per-channel int8 quantization makes onnxruntime log ``Axis 1 is out-of-range ...`` for every norm
weight (``logging.warning`` on the root logger, which would print to stderr)."""

from __future__ import annotations

import logging
import sys
import warnings

import optuna
import timm
import torch
from optuna.trial import TrialState

from search.config.run_config import RunConfig
from search.core.layout import TRIAL_LOG, trial_dir
from search.core.trial_log import library_output_to
from search.study.engine import space_for
from search.study.objective import Objective
from search.study.progress import Progress
from search.study.runner import run_trial
from search.task.baseline import prepare_all
from targets.latency import plan_latency
from tests.support.data import image_folder

CHATTER = "is out-of-range for weight"


def test_a_trials_library_chatter_goes_to_its_log_file_and_not_the_console(tmp_path, capfd, monkeypatch):
    # as in `edgepareto search`: no handler on the root logger (pytest adds its own; they go for the test)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    torch.manual_seed(0)
    checkpoint = tmp_path / "convnext.pt"
    torch.save(timm.create_model("test_convnext", num_classes=2).state_dict(), checkpoint)
    data = image_folder(tmp_path / "data", per_class=10, size=32)
    cfg = RunConfig(name="r", model="test_convnext", img_size=32, data=str(data), checkpoint=str(checkpoint),
                    space="quant-only", repeats=5, max_accuracy_drop=None)
    progress = Progress(cfg.objectives, cfg.directions)  # the console: stderr
    tasks = prepare_all(cfg, tmp_path, progress.log, progress.warn)
    space = space_for(cfg.space, {cfg.model: tasks[cfg.model].base})
    plan = plan_latency(cfg.target, cfg.latency, None, cfg.threads, cfg.repeats, tmp_path)
    run_dir = tmp_path / "r"
    objective = Objective(cfg, tasks, space, plan, run_dir, progress)
    study = optuna.create_study(directions=cfg.directions)
    static_per_channel = space.recipes()[0]
    assert "static" in static_per_channel.values() and True in static_per_channel.values()
    study.enqueue_trial(static_per_channel)
    trial = study.ask()
    capfd.readouterr()

    outcome = run_trial(trial, objective)

    out, err = capfd.readouterr()
    assert outcome.state == TrialState.COMPLETE, outcome.reason
    assert CHATTER not in out and CHATTER not in err and "WARNING:root" not in err, err
    assert "quantize" in err  # our own progress lines still reach the console
    log = (trial_dir(run_dir, trial.number) / TRIAL_LOG).read_text()
    assert CHATTER in log and "WARNING root:" in log
    assert logging.getLogger().handlers == []  # restored: nothing added for stderr either


def test_the_log_file_waits_for_the_trial_folder_and_everything_is_restored(tmp_path, capfd):
    folder = tmp_path / "trials" / "0007"
    root = logging.getLogger()
    before = (root.handlers[:], sys.stdout, warnings.showwarning)
    with library_output_to(folder / TRIAL_LOG):
        logging.warning("before the folder exists")
        assert not folder.exists()  # the objective creates it, never over an existing one
        folder.mkdir(parents=True)
        print("a library's print")
        warnings.warn("a library's warning", RuntimeWarning, stacklevel=1)
        logging.getLogger("some.library").error("and its error")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert (root.handlers, sys.stdout, warnings.showwarning) == before
    lines = (folder / TRIAL_LOG).read_text().splitlines()
    assert lines[0].endswith("WARNING root: before the folder exists")
    assert "a library's print" in lines
    assert any("a library's warning" in line for line in lines)
    assert lines[-1].endswith("ERROR some.library: and its error")


def test_chatter_of_a_trial_that_never_made_its_folder_is_kept(tmp_path):
    folder = tmp_path / "trials" / "0003"
    with library_output_to(folder / TRIAL_LOG):
        logging.warning("the candidate failed before its folder was made")
    assert "failed before its folder" in (folder / TRIAL_LOG).read_text()


def test_no_chatter_no_file(tmp_path):
    folder = tmp_path / "trials" / "0001"
    folder.mkdir(parents=True)
    with library_output_to(folder / TRIAL_LOG):
        pass
    assert not (folder / TRIAL_LOG).exists()
