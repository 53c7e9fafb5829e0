"""Starting from a user's checkpoint, a custom storage URL, and the timeout stop condition."""

import optuna
import pandas as pd
import pytest
import safetensors.torch
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
        args = ["search", "--runs-dir", str(tmp_path / "runs"), "--name", kind, "--model", "test_resnet",
                "--img-size", "16", "--quiet", "--trials", "1", "--checkpoint", ckpt]  # no --epochs
        code, _, err = run_cli(args, capfd)
        assert code == 0, err
        assert not (tmp_path / "runs" / ".cache").exists()  # trained for the data's classes: used as it is
    # both start from the same weights: the same baseline accuracy
    first = [pd.read_csv(tmp_path / "runs" / k / "pareto.csv").iloc[0] for k in ("sd", "whole")]
    assert first[0]["val_accuracy"] == first[1]["val_accuracy"]


def test_a_checkpoint_for_other_classes_is_fine_tuned_and_cached_by_its_digest(tmp_path, capfd):
    torch.manual_seed(0)
    ckpt = tmp_path / "imagenet_like.safetensors"
    weights = timm.create_model("test_resnet", num_classes=7).state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in weights.items()}, str(ckpt))
    args = tiny_args(tmp_path / "runs", "ft", "--trials", "1", "--checkpoint", str(ckpt), "--epochs", "1")
    code, _, err = run_cli(args, capfd)
    assert code == 0, err
    warning = f"checkpoint {ckpt} has a classifier for 7 classes; re-initialised for the data's 10 classes"
    assert warning in err
    cached = list((tmp_path / "runs" / ".cache" / "baselines").glob("test_resnet-*/model.pt"))
    assert len(cached) == 1  # fine-tuned for --epochs 1, cached like a baseline
    code, _, err = run_cli(tiny_args(tmp_path / "runs", "ft2", "--trials", "1", "--checkpoint", str(ckpt),
                                     "--epochs", "1"), capfd)
    assert code == 0, err
    assert list((tmp_path / "runs" / ".cache" / "baselines").glob("test_resnet-*/model.pt")) == cached
    ckpt.write_bytes(ckpt.read_bytes()[:-4] + b"\0\0\0\0")  # other weights: another cache entry
    code, _, err = run_cli(tiny_args(tmp_path / "runs", "ft3", "--trials", "1", "--checkpoint", str(ckpt),
                                     "--epochs", "1"), capfd)
    assert code == 0, err
    assert len(list((tmp_path / "runs" / ".cache" / "baselines").glob("test_resnet-*/model.pt"))) == 2


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
