"""ViT flags checked before anything is trained: one line on stderr, exit code 2."""

import pytest

from tests.support.cli import run_cli


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--model", "test_resnet", "--space", "vit"], "vit_prune does not apply to test_resnet"),
        (["--model", "test_vit", "--teacher", "nosuchnet_b0"], "unknown timm model 'nosuchnet_b0'"),
        (["--model", "test_vit", "--teacher", "missing.pt"], "teacher checkpoint missing.pt does not exist"),
        (["--model", "test_vit", "--patch-size", "5"], "does not divide"),
        (["--model", "test_resnet", "--patch-size", "4"], "applies to ViT-style models"),
        (["--model", "test_vit,test_vit"], "lists a model twice"),
    ],
)
def test_bad_vit_flags(tmp_path, capfd, flags, needle):
    args = ["search", "--runs-dir", str(tmp_path / "runs"), "--img-size", "16", "--epochs", "1",
            "--trials", "1", "--quiet", *flags]
    code, _, err = run_cli(args, capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("search-*"))
