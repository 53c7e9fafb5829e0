"""Starting from a user's checkpoint, a custom storage URL, and the timeout stop condition."""

import optuna
import pandas as pd
import pytest
import timm
import torch

from tests.support.cli import TINY, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def tiny_args(runs, name, *extra):
    return ["search", "--runs-dir", str(runs), "--name", name, *TINY, *extra]


def test_state_dict_and_whole_model_checkpoints(tmp_path, capfd):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "sd.pt")
    torch.save(model, tmp_path / "whole.pt")
    for kind in ("sd", "whole"):
        ckpt = str(tmp_path / f"{kind}.pt")
        args = tiny_args(tmp_path / "runs", kind, "--trials", "1", "--checkpoint", ckpt)
        code, _, err = run_cli(args, capfd)
        assert code == 0, err
        assert not (tmp_path / "runs" / ".cache").exists()  # no baseline was trained
    # both start from the same weights: the same baseline accuracy
    first = [pd.read_csv(tmp_path / "runs" / k / "pareto.csv").iloc[0] for k in ("sd", "whole")]
    assert first[0]["val_accuracy"] == first[1]["val_accuracy"]


def test_storage_url_and_timeout(tmp_path, runs_dir, capfd):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    args = tiny_args(runs_dir, "timed", "--trials", "50", "--timeout", "0.5",
                     "--space", "quant-only", "--storage", url)
    code, _, err = run_cli(args, capfd)
    assert code == 0, err
    assert not (runs_dir / "timed" / "study.db").exists()
    study = optuna.load_study(study_name="timed", storage=url)
    assert 1 <= len(study.trials) < 50
    # the same study name in the same storage is refused without --resume
    code, _, err = run_cli(tiny_args(tmp_path / "runs2", "timed", "--storage", url), capfd)
    assert code == 2 and "already has a study" in err
