"""Training defaults per model family and start: from scratch, fine-tuning pretrained weights, or a
checkpoint already trained for the data; the user's settings win."""

from __future__ import annotations

import pytest
import timm

from search.task.models import STARTS, TRAINING, Training, training_for


@pytest.fixture(scope="module")
def cnn_and_vit():
    return timm.create_model("test_resnet", num_classes=2), timm.create_model("test_vit", num_classes=2)


def test_defaults_per_family_and_start(cnn_and_vit):
    cnn, vit = cnn_and_vit
    assert set(TRAINING) == {(f, s) for f in ("cnn", "vit") for s in STARTS}
    assert training_for(cnn, None, None, None) == Training(15, 3e-3, 2e-3)  # scratch by default
    assert training_for(vit, None, None, None) == Training(30, 1e-3, 5e-4)
    assert training_for(cnn, None, None, None, start="pretrained") == Training(2, 5e-4, 2e-4)
    assert training_for(vit, None, None, None, start="pretrained") == Training(2, 2e-4, 1e-4)
    assert training_for(cnn, None, None, None, start="checkpoint") == Training(0, 5e-4, 2e-4)
    assert training_for(vit, None, None, None, start="checkpoint") == Training(0, 2e-4, 1e-4)


def test_the_users_settings_win(cnn_and_vit):
    cnn, vit = cnn_and_vit
    assert training_for(vit, 4, None, None, start="checkpoint") == Training(4, 2e-4, 1e-4)
    assert training_for(cnn, 3, 1e-2, 1e-3, start="pretrained") == Training(3, 1e-2, 1e-3)
    with pytest.raises(ValueError, match="start must be one of scratch, pretrained, checkpoint"):
        training_for(cnn, None, None, None, start="imagenet")
