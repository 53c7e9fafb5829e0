"""Unreadable images: skipped, the first few named in the warning, all of them listed in the run
folder's ``unreadable_images.txt``."""

from pathlib import Path

import timm
import torch

from search.config.run_config import RunConfig
from search.core.layout import UNREADABLE_FILE
from search.task.baseline import NAMED_UNREADABLE, prepare_all, write_unreadable
from search.task.data import load_dataset
from tests.support.data import image_folder

NORM = ((0.5,) * 3, (0.5,) * 3)
BROKEN = ("a/broken one (1).png", "a/zz.jpg", "b/bad.png", "b/nested/worse.gif", "b/truncated.jpg")


def broken_folder(root: Path) -> Path:
    """Two classes of 10 good images, and the ``BROKEN`` files that Pillow cannot read."""
    image_folder(root, per_class=10)
    for rel in BROKEN:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\xff\xd8 not an image")
    return root


def test_the_data_set_keeps_the_paths_it_skipped(tmp_path):
    root = broken_folder(tmp_path / "data")
    data = load_dataset(str(root), 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert data.unreadable == tuple(root / rel for rel in BROKEN)
    assert data.skipped == len(BROKEN)
    assert len(data.train) + len(data.val) + len(data.test) == 20


def test_the_warning_names_the_first_files_and_the_run_folder_lists_them_all(tmp_path):
    root = broken_folder(tmp_path / "data")
    checkpoint = tmp_path / "two_classes.pt"
    torch.save(timm.create_model("test_resnet", num_classes=2).state_dict(), checkpoint)
    cfg = RunConfig(name="r", model="test_resnet", img_size=16, data=str(root), checkpoint=str(checkpoint))
    warnings: list[str] = []
    tasks = prepare_all(cfg, tmp_path / "runs", lambda _m: None, warnings.append)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    warning = warnings[0]
    assert warning.startswith(f"skipped {len(BROKEN)} unreadable image(s) in {root}: ")
    named = BROKEN[:NAMED_UNREADABLE]
    assert ", ".join(named) + ", ..." in warning
    assert BROKEN[-1] not in warning
    listing = tmp_path / "runs" / "r" / UNREADABLE_FILE
    assert warning.endswith(f"(all listed in {listing})")
    assert write_unreadable(listing.parent, tasks) == listing
    assert listing.read_text().splitlines() == [str(root / rel) for rel in BROKEN]


def test_no_listing_when_every_image_is_readable(tmp_path):
    root = image_folder(tmp_path / "data", per_class=10)
    checkpoint = tmp_path / "two_classes.pt"
    torch.save(timm.create_model("test_resnet", num_classes=2).state_dict(), checkpoint)
    cfg = RunConfig(name="r", model="test_resnet", img_size=16, data=str(root), checkpoint=str(checkpoint))
    warnings: list[str] = []
    tasks = prepare_all(cfg, tmp_path / "runs", lambda _m: None, warnings.append)
    assert warnings == []
    assert write_unreadable(tmp_path / "runs" / "r", tasks) is None
    assert not (tmp_path / "runs" / "r" / UNREADABLE_FILE).exists()
