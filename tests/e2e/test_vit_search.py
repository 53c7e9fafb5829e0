"""ViT searches end to end: the vit space chosen automatically, a CNN teacher, several models."""

import json

import pandas as pd
import pytest
import torch
import yaml

from search.task.models import create
from tests.support.cli import run_cli

pytestmark = pytest.mark.slow

VIT_TINY = ["--model", "test_vit", "--img-size", "16", "--patch-size", "4", "--epochs", "2", "--quiet"]
#: The settings of VIT_TINY, for the session's trained baselines (``baselines`` fixture).
VIT_SETTINGS = {"model": "test_vit", "patch_size": 4}


@pytest.fixture
def vit_runs(tmp_path, baselines):
    """A fresh runs dir holding the tiny ViT's baseline, and the tiny CNN teacher trained for it."""
    return baselines.seed(tmp_path / "runs", **VIT_SETTINGS, teacher="test_resnet")


@pytest.mark.timeout(600)
def test_vit_search_end_to_end(vit_runs, capfd):
    args = ["search", "--runs-dir", str(vit_runs), "--name", "vit", "--trials", "6", *VIT_TINY]
    code, out, err = run_cli(args, capfd)
    assert code == 0, err
    run = vit_runs / "vit"
    space = yaml.safe_load((run / "space.yaml").read_text())
    assert space["models"]["test_vit"]["name"] == "vit"  # --space auto picked the ViT preset
    trials = pd.read_csv(run / "trials.csv")
    trials = trials[trials["state"] != "WAITING"]  # recipes enqueued beyond --trials stay waiting
    # baseline, then the warm-start recipes of the ViT techniques: every one builds, exports, runs
    assert list(trials["state"]) == ["COMPLETE"] * 6, trials["fail_reason"].tolist()
    techniques = " ".join(trials["techniques"])
    for name in ("vit_prune", "vit_embed", "vit_lowrank"):
        assert name in techniques
    pruned = trials[trials["techniques"].str.startswith("vit_prune")].iloc[0]
    baseline = trials.iloc[0]
    assert pruned["macs"] < baseline["macs"] and pruned["params"] < baseline["params"]
    pareto = pd.read_csv(run / "pareto.csv")
    assert pareto.iloc[0]["role"].startswith("baseline") and (pareto["model"] == "test_vit").all()


@pytest.mark.timeout(240)
def test_cnn_teacher_distils_a_vit(vit_runs, tmp_path, capfd):
    space = tmp_path / "distill-only.yaml"
    space.write_text("techniques:\n  distill: {enabled: always, epochs: 1, alpha: 0.7}\n")
    args = ["search", "--runs-dir", str(vit_runs), "--name", "vit-teacher", "--trials", "2",
            "--teacher", "test_resnet", "--space", str(space), *VIT_TINY]
    args.remove("--quiet")
    code, _, err = run_cli(args, capfd)
    assert code == 0, err
    assert "teacher: cached" in err and "teacher: training" not in err  # seeded with the baseline
    trials = pd.read_csv(vit_runs / "vit-teacher" / "trials.csv")
    assert list(trials["state"]) == ["COMPLETE", "COMPLETE"]
    assert trials.iloc[1]["techniques"].startswith("distill(1ep")
    run_yaml = yaml.safe_load((vit_runs / "vit-teacher" / "run.yaml").read_text())
    assert run_yaml["teacher"] == "test_resnet"


@pytest.mark.timeout(240)
def test_teacher_from_a_checkpoint_file(vit_runs, tmp_path, capfd):
    torch.manual_seed(1)
    ckpt = tmp_path / "teacher.pt"
    torch.save(create("test_vit", 10, 16, patch_size=4).state_dict(), ckpt)
    space = tmp_path / "space.yaml"
    space.write_text("techniques:\n  distill: {enabled: always, epochs: 1, alpha: 1.0}\n")
    args = ["search", "--runs-dir", str(vit_runs), "--name", "vit-ckpt-teacher", "--trials", "2",
            "--teacher", str(ckpt), "--space", str(space), *VIT_TINY]
    args.remove("--quiet")
    code, _, err = run_cli(args, capfd)
    assert code == 0, err
    assert f"teacher: {ckpt}" in err


@pytest.mark.timeout(900)
def test_several_models_in_one_study(tmp_path, baselines, capfd):
    runs = baselines.seed(tmp_path / "runs", model="test_resnet,test_vit", patch_size=4)
    args = ["search", "--runs-dir", str(runs), "--name", "mixed", "--trials", "6",
            "--model", "test_resnet,test_vit", "--img-size", "16", "--patch-size", "4", "--epochs", "2",
            "--quiet"]
    code, out, err = run_cli(args, capfd)
    assert code == 0, err
    run = runs / "mixed"
    trials = pd.read_csv(run / "trials.csv")
    trials = trials[trials["state"] != "WAITING"]  # recipes enqueued beyond --trials stay waiting
    assert list(trials["state"]) == ["COMPLETE"] * 6, trials["fail_reason"].tolist()
    assert list(trials["model"][:2]) == ["test_resnet", "test_vit"] and trials["baseline"][:2].all()
    params = [json.loads(p) for p in trials["params_json"]]
    assert all(p["model"] == m for p, m in zip(params, trials["model"]))
    # each model has its own subspace: CNN pruning for the ResNet, ViT techniques for the ViT
    assert any(k.startswith("test_resnet/prune") for p in params for k in p)
    assert any(k.startswith("test_vit/vit_prune") for p in params for k in p)
    pareto = pd.read_csv(run / "pareto.csv")
    baselines = pareto[pareto["role"].str.startswith("baseline")]
    assert list(baselines["model"]) == ["test_resnet", "test_vit"]
    assert pareto.iloc[0]["speedup"] == 1.0  # relative to the first model's baseline
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["preprocessing"]["by_model"]) == {"test_resnet", "test_vit"}
    code, shown, _ = run_cli(["show", "mixed", "--runs-dir", str(runs)], capfd)
    assert code == 0 and "test_vit" in shown and "test_resnet" in shown
    assert shown.splitlines()[0].split()[:2] == ["trial", "model"]

    # resume reads the joint space back and keeps sampling per-model subspaces
    code, _, err = run_cli(["search", "--resume", "mixed", "--runs-dir", str(runs), "--trials", "8",
                            "--quiet"], capfd)
    assert code == 0, err
    trials = pd.read_csv(run / "trials.csv")
    done = trials[trials["state"] == "COMPLETE"]
    assert len(done) == 8 and set(done["model"]) == {"test_resnet", "test_vit"}
    for p, m in zip(done["params_json"].map(json.loads), done["model"]):
        assert p["model"] == m and all(k == "model" or k.startswith(f"{m}/") for k in p)
