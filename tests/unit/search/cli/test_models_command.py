"""``edgepareto models``: the family table, one model's family, and a bad name as one line."""

from __future__ import annotations

import os

from search.cli.main import main, shares_the_machine
from search.task.families import FAMILIES


def test_models_lists_every_family_with_its_defaults(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in FAMILIES.names():
        fam = FAMILIES.get(name)
        assert f"\n{name}\n" in f"\n{out}" and f"{fam.img_size} px" in out
    assert "timm.models.mobilenetv3" in out and "mobile" in out


def test_models_names_the_family_of_one_model(capsys):
    assert main(["models", "mobilenetv2_100"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mobilenetv2_100: family mobilenetv2") and "60 ep, lr 0.003" in out
    assert "mobilenetv2_*" in out  # what the family covers: a name prefix, not a module


def test_an_unknown_model_is_one_line_and_exit_2(capsys):
    assert main(["models", "mobilenet_v2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown timm model 'mobilenet_v2'" in err and "mobilenetv2_100" in err and "\n" not in err


def test_a_config_files_ray_backend_shares_the_machine_unless_a_flag_says_otherwise(tmp_path):
    ray, local = tmp_path / "ray.yaml", tmp_path / "local.yaml"
    ray.write_text("model: resnet18\nbackend: ray\n")
    local.write_text("model: resnet18\n")
    assert shares_the_machine(["search", "--config", str(ray)])
    assert shares_the_machine(["search", f"--config={ray}"])
    assert not shares_the_machine(["search", "--config", str(ray), "--backend", "optuna"])
    assert not shares_the_machine(["search", "--config", str(local)])
    assert not shares_the_machine(["search", "--config", str(tmp_path / "missing.yaml")])


def test_openmp_threads_wait_passively_where_trials_share_the_machine(monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    main(["models"])
    assert "OMP_WAIT_POLICY" not in os.environ  # a lone command keeps OpenMP's spinning default
    assert shares_the_machine(["worker", "NAME"]) and shares_the_machine(["serve"])
    assert shares_the_machine(["search", "--backend", "ray"]) and not shares_the_machine(["search"])
    main(["worker", "no-such-run", "--runs-dir", "/nonexistent"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # inherited by every process it starts
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main(["worker", "no-such-run", "--runs-dir", "/nonexistent"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice wins
