"""Data: the embedded digits and ImageFolder trees, split seeded and stratified."""

import numpy as np
import torch
from PIL import Image

from search.task.data import load_dataset

NORM = ((0.5,) * 3, (0.5,) * 3)


def test_digits_split_is_stratified_seeded_and_shaped():
    a = load_dataset("digits", 24, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert a.num_classes == 10 and a.train.x.shape[1:] == (3, 24, 24)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert abs(len(a.test) - 0.2 * 1797) <= 1 and abs(len(a.val) - 0.2 * 1797) <= 1
    share = np.bincount(a.train.y.numpy()) / len(a.train)
    for split in (a.val, a.test):  # every class in about the same proportion
        assert np.abs(np.bincount(split.y.numpy()) / len(split) - share).max() < 0.01
    b = load_dataset("digits", 24, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2)
    c = load_dataset("digits", 24, *NORM, seed=1, val_fraction=0.2, test_fraction=0.2)
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    # the three channels are the same grayscale image, normalised to [-1, 1]
    assert torch.equal(a.train.x[:, 0], a.train.x[:, 2]) and a.train.x.min() >= -1.0


def test_image_folder_reads_classes_in_sorted_order(tmp_path):
    rng = np.random.default_rng(0)
    for cls, value in (("cat", 0), ("dog", 255)):
        (tmp_path / cls).mkdir()
        for i in range(10):
            noise = (rng.random((9, 9, 3)) * 255).astype(np.uint8)
            arr = np.full((20, 30, 3), value, np.uint8) if i % 2 else noise
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.{'png' if i % 3 else 'jpg'}")
    data = load_dataset(str(tmp_path), 16, *NORM, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert data.classes == ("cat", "dog") and data.skipped == 0
    assert len(data.train) + len(data.val) + len(data.test) == 20
    assert data.train.images(len(data.train)).shape == (len(data.train), 3, 16, 16)
    assert sorted(data.test.labels.tolist()) == [0, 0, 1, 1]
