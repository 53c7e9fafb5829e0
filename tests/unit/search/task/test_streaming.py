"""An ImageFolder is read lazily: corrupt files met mid-run are skipped and counted, a vanished folder
fails the trial with its path, small classes are one line before any training, and augmentation is
timm's training transform."""

from __future__ import annotations

import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from search.candidate.build import export_onnx
from search.candidate.evaluate import onnx_accuracy
from search.core.errors import CandidateError, UserError
from search.task.data import FolderSplit, eval_transform, load_dataset, model_preprocess
from spaces.train import fit
from tests.support.data import image_folder

NORM = ((0.5,) * 3, (0.5,) * 3)


def folder(tmp_path, per_class=8, size=20):
    return image_folder(tmp_path / "data", classes=("a", "b"), per_class=per_class, size=size)


def corrupt_after_indexing(root, split: FolderSplit) -> str:
    """Truncate one file of ``split`` after the data set was indexed (its header still parses)."""
    rel = split.files[0]
    path = root / rel
    arr = (np.random.default_rng(1).random((40, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path.with_suffix(".tmp.jpg"), format="JPEG")
    data = path.with_suffix(".tmp.jpg").read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated JPEG: Pillow opens it, decoding fails
    path.with_suffix(".tmp.jpg").unlink()
    return rel


def test_a_corrupt_image_met_mid_epoch_is_skipped_and_counted(tmp_path):
    root = folder(tmp_path, per_class=10)
    data = load_dataset(str(root), 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2, workers=1)
    rel = corrupt_after_indexing(root, data.train)
    model = timm.create_model("test_resnet", num_classes=2)
    fit(model, data.train, epochs=2, lr=1e-3, batch_size=4, seed=0)  # no exception
    assert data.corrupt.paths == [rel]  # counted once over two epochs
    message = data.corrupt.message()
    assert message.startswith("skipped 1 corrupt or truncated image(s)") and rel in message
    assert "\n" not in message
    assert data.corrupt.unreported() == message and data.corrupt.unreported() is None  # warned once
    seen = sum(len(y) for _, y in data.train.batches(64))
    assert seen == len(data.train) - 1


def test_the_artifacts_accuracy_counts_only_the_images_it_could_read(tmp_path):
    root = folder(tmp_path, per_class=10)
    data = load_dataset(str(root), 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2, workers=0)
    model = timm.create_model("test_resnet", num_classes=2).eval()
    path = export_onnx(model, data.val.images(1), tmp_path / "m.onnx")
    rel = corrupt_after_indexing(root, data.val)
    with torch.no_grad():
        x = torch.cat([x for x, _ in data.val.batches(64)])
        y = torch.cat([y for _, y in data.val.batches(64)])
        expected = float((model(x).argmax(1) == y).float().mean())
    assert len(y) == len(data.val) - 1
    assert onnx_accuracy(path, data.val) == pytest.approx(expected)
    assert rel in data.corrupt.paths


def test_a_folder_gone_mid_run_fails_with_its_path(tmp_path):
    root = folder(tmp_path)
    data = load_dataset(str(root), 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2, workers=0)
    gone = root / "a"
    for f in gone.iterdir():
        f.unlink()
    gone.rmdir()
    with pytest.raises(CandidateError, match=f"unreadable mid-run: folder {gone} is gone"):
        list(data.train.batches(64))


@pytest.mark.parametrize(("per_class", "fraction", "message"), [
    (2, 0.2, r"class 'a' has 2 image\(s\); the train/val/test split \(val 0.2, test 0.2\) needs at least 5"),
    (4, 0.25, None),
])
def test_a_class_too_small_to_split_is_one_line(tmp_path, per_class, fraction, message):
    root = image_folder(tmp_path / "data", classes=("a", "b"), per_class=per_class)
    for i in range(per_class, 12):  # class b is large enough
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "b" / f"x{i}.png")
    if message is None:  # exactly enough: it loads
        load_dataset(str(root), 16, *NORM, seed=0, val_fraction=fraction, test_fraction=fraction)
        return
    with pytest.raises(UserError, match=message):
        load_dataset(str(root), 16, *NORM, seed=0, val_fraction=fraction, test_fraction=fraction)


def test_one_class_is_one_line(tmp_path):
    root = image_folder(tmp_path / "data", classes=("only",), per_class=6)
    with pytest.raises(UserError, match="needs one sub-folder per class, at least two \\(found 1\\)"):
        load_dataset(str(root), 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2)


def test_evaluation_is_the_models_resize_and_centre_crop(tmp_path):
    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            arr = (np.random.default_rng(i).random((30 + i, 50, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.jpg")
    prep = model_preprocess("resnet18", 24, str(root))
    assert (prep.mode, prep.interpolation, prep.crop_pct) == ("crop", "bicubic", 0.95)
    data = load_dataset(str(root), 24, prep.mean, prep.std, 0, 0.2, 0.2, preprocess=prep, workers=0)
    assert data.preprocess == prep and data.augment == "light"
    reference = timm.data.create_transform(
        input_size=(3, 24, 24), interpolation="bicubic", mean=prep.mean, std=prep.std, crop_pct=0.95,
    )
    files = [root / f for f in data.test.files]
    expected = torch.stack([reference(Image.open(f).convert("RGB")) for f in files])
    assert torch.equal(data.test.images(len(files)), expected)
    assert torch.equal(eval_transform(prep)(Image.open(files[0]).convert("RGB")), expected[0])


def test_training_batches_are_augmented_and_seeded(tmp_path):
    root = folder(tmp_path, per_class=10, size=32)
    data = load_dataset(str(root), 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2, workers=1)
    plain = next(data.train.batches(64))[0]
    a = next(data.train.batches(64, shuffle_seed=3, augment=True))
    b = next(data.train.batches(64, shuffle_seed=3, augment=True))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # the same seed: the same batch
    assert sorted(a[1].tolist()) == sorted(data.train.labels.tolist())
    assert not torch.equal(torch.sort(a[0].flatten())[0], torch.sort(plain.flatten())[0])
    none = load_dataset(str(root), 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2, augment="none")
    assert torch.equal(next(none.train.batches(64, augment=True))[0], plain)


def test_the_digits_take_shift_only_and_image_folders_refuse_it(tmp_path):
    with pytest.raises(UserError, match="--augment light applies to ImageFolder data"):
        load_dataset("digits", 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2, augment="light")
    shifted = load_dataset("digits", 32, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2, augment="shift")
    plain = load_dataset("digits", 32, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2, augment="none")
    assert shifted.train.shift == 4 and plain.train.shift == 0 and shifted.augment == "shift"
    # the baseline cache tells them apart; a plain one keeps the key it had before shift existed
    assert shifted.fingerprint == plain.fingerprint + "-ashift" and "-a" not in plain.fingerprint
    assert torch.equal(shifted.val.x, plain.val.x)
    with pytest.raises(UserError, match="--augment shift is the embedded digits' augmentation"):
        load_dataset(str(folder(tmp_path, per_class=5)), 16, *NORM, seed=0, val_fraction=0.2,
                     test_fraction=0.2, augment="shift")


def test_worker_processes_read_the_same_images(tmp_path):
    if (os.cpu_count() or 1) < 1:
        pytest.skip("no cpu")
    root = folder(tmp_path, per_class=20)
    data = load_dataset(str(root), 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2, workers=2)
    many = torch.cat([x for x, _ in data.train.batches(4)])  # more than 2 batches: workers start
    inline = load_dataset(str(root), 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2, workers=0)
    assert torch.equal(many, torch.cat([x for x, _ in inline.train.batches(4)]))
