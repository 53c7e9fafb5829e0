"""Every bad input: one clear line on stderr, exit code 2, no traceback, nothing overwritten."""

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from tests.support.cli import TINY, run_cli, run_module
from tests.support.data import image_folder


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("edgepareto: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in err


def search(tmp_path: Path, *extra: str) -> list[str]:
    return ["search", "--runs-dir", str(tmp_path / "runs"), "--trials", "1", *TINY, *extra]


def test_unknown_model_lists_close_matches(tmp_path, capfd):
    code, _, err = run_cli(search(tmp_path, "--model", "resnet181"), capfd)
    assert_one_line_error(code, err, "unknown timm model 'resnet181'")
    assert "resnet18" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_data_path(tmp_path, capfd):
    code, _, err = run_cli(search(tmp_path, "--data", str(tmp_path / "nope")), capfd)
    assert_one_line_error(code, err, "does not exist")


def test_data_path_that_is_not_an_image_folder(tmp_path, capfd):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.png")
    code, _, err = run_cli(search(tmp_path, "--data", str(tmp_path / "flat")), capfd)
    assert_one_line_error(code, err, "not an ImageFolder")
    code, _, err = run_cli(search(tmp_path, "--data", str(tmp_path / "flat" / "x.png")), capfd)
    assert_one_line_error(code, err, "not a folder")


def test_empty_class_folder(tmp_path, capfd):
    root = image_folder(tmp_path / "data")
    (root / "c").mkdir()
    code, _, err = run_cli(search(tmp_path, "--data", str(root)), capfd)
    assert_one_line_error(code, err, "has no images")


@pytest.mark.slow  # a whole search (on the folder: its own baseline)
def test_corrupt_images_are_skipped_with_a_warning(tmp_path, capfd):
    root = image_folder(tmp_path / "data", per_class=10)
    (root / "a" / "broken.png").write_bytes(b"not a png at all")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    code, _, err = run_cli(search(tmp_path, "--data", str(root), "--name", "r"), capfd)
    assert code == 0, err
    listing = tmp_path / "runs" / "r" / "unreadable_images.txt"
    assert f"warning: skipped 2 unreadable image(s) in {root}: a/broken.png, b/broken.jpg" in err
    assert f"(all listed in {listing})" in err
    assert listing.read_text().splitlines() == [str(root / f) for f in ("a/broken.png", "b/broken.jpg")]


def test_only_corrupt_images_is_an_error(tmp_path, capfd):
    root = image_folder(tmp_path / "data")
    for f in (root / "b").iterdir():
        f.write_bytes(b"garbage")
    code, _, err = run_cli(search(tmp_path, "--data", str(root)), capfd)
    assert_one_line_error(code, err, "no readable images")


def test_unreadable_checkpoint(tmp_path, capfd):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    code, _, err = run_cli(search(tmp_path, "--checkpoint", str(bad)), capfd)
    assert_one_line_error(code, err, "cannot read checkpoint")
    code, _, err = run_cli(search(tmp_path, "--checkpoint", str(tmp_path / "missing.pt")), capfd)
    assert_one_line_error(code, err, "does not exist")


def test_checkpoint_with_mismatched_shapes(tmp_path, capfd):
    ckpt = tmp_path / "other_architecture.pt"  # another class count alone is a reset head, not an error
    torch.save(timm.create_model("test_vit", num_classes=10).state_dict(), ckpt)
    code, _, err = run_cli(search(tmp_path, "--checkpoint", str(ckpt)), capfd)
    assert_one_line_error(code, err, "does not match the model")


def test_invalid_space_file_and_out_of_range_parameter(tmp_path, capfd):
    bad = tmp_path / "space.yaml"
    bad.write_text("techniques:\n  prune: {ratio: [0.1, 1.5]}\n")
    code, _, err = run_cli(search(tmp_path, "--space", str(bad)), capfd)
    assert_one_line_error(code, err, "out of range")
    bad.write_text("{{{ not yaml")
    code, _, err = run_cli(search(tmp_path, "--space", str(bad)), capfd)
    assert_one_line_error(code, err, "cannot read space file")


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--trials", "0"], "--trials"),
        (["--trials", "many"], "--trials"),
        (["--min-accuracy", "98"], "fraction"),
        (["--objectives", "accuracy,speed"], "unknown objective"),
        (["--target", "raspberry"], "unknown target"),
        (["--storage", "nosuchdb://nowhere"], "cannot open storage"),
    ],
)
def test_bad_flags(tmp_path, capfd, flags, needle):
    args = ["search", "--runs-dir", str(tmp_path / "runs"), *TINY, *flags]
    code, _, err = run_cli(args, capfd)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.01"])
def test_bench_mixed_precision_rejects_a_max_drop_that_is_not_a_fraction(tmp_path, capfd, value):
    args = ["bench", "techniques", "--mixed-precision", "--max-drop", value, "--runs-dir", str(tmp_path)]
    code, _, err = run_cli(args, capfd)
    assert_one_line_error(code, err, "--max-drop must be a fraction")
    assert not any(tmp_path.iterdir())  # nothing trained


def test_unwritable_runs_directory(tmp_path, capfd):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the runs folder should be")
    args = ["search", "--runs-dir", str(blocker / "runs"), "--trials", "1", *TINY]
    code, _, err = run_cli(args, capfd)
    assert_one_line_error(code, err, "not writable")


def test_existing_run_name_is_never_overwritten(tmp_path, capfd):
    run = tmp_path / "runs" / "taken"
    run.mkdir(parents=True)
    (run / "run.yaml").write_text("precious: true\n")
    code, _, err = run_cli(search(tmp_path, "--name", "taken"), capfd)
    assert_one_line_error(code, err, "already exists")
    assert (run / "run.yaml").read_text() == "precious: true\n"
    assert sorted(p.name for p in run.iterdir()) == ["run.yaml"]


def test_resume_of_unknown_run_and_show_of_unknown_run(tmp_path, capfd):
    code, _, err = run_cli(["search", "--runs-dir", str(tmp_path), "--resume", "ghost"], capfd)
    assert_one_line_error(code, err, "no run 'ghost'")
    code, _, err = run_cli(["show", "ghost", "--runs-dir", str(tmp_path)], capfd)
    assert_one_line_error(code, err, "no run at")


def test_python_dash_m_reports_bad_input_without_traceback(tmp_path):
    proc = run_module(["search", "--trials", "0"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
