"""The in-memory data set, estimated before any data is read: images counted without opening them, and
a size that this machine cannot hold refused in one line, exit 2."""

import pytest
from sklearn.datasets import load_digits

from search.config.bounds import MEMORY_SHARE, available_memory, dataset_bytes
from search.task.data import DIGITS_IMAGES, image_count
from tests.support.cli import run_cli
from tests.support.data import image_folder


def test_images_are_counted_as_load_dataset_would_read_them(tmp_path):
    root = image_folder(tmp_path / "data", per_class=4)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(b"")
    (root / "b" / "deeper").mkdir()
    (root / "b" / "deeper" / "y.JPG").write_bytes(b"unreadable, still counted")
    assert image_count(str(root)) == 9
    assert image_count(str(tmp_path / "missing")) == 0
    assert image_count("digits") == DIGITS_IMAGES == len(load_digits().images)


def test_an_image_size_this_machine_cannot_hold_is_one_line_and_exit_2(tmp_path, capfd):
    size = 2048  # the largest the bounds allow: the digits need 271 GB at this size
    available = available_memory()
    if available is None or dataset_bytes(DIGITS_IMAGES, size) <= MEMORY_SHARE * available:
        pytest.skip("this machine has the memory for the digits at 2048 px")
    code, _, err = run_cli(["search", "--runs-dir", str(tmp_path / "runs"), "--img-size", str(size)], capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("edgepareto: error: --img-size 2048: 1797 images need about 271 GB in memory")
    assert "use --img-size" in lines[0] and not (tmp_path / "runs").exists()
