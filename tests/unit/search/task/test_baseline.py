"""The baseline: seeded, so training it twice gives the same weights; then cached by its key. On a tiny
image folder (24 images), so that training takes no time."""

import pytest
import torch

from search.config.run_config import RunConfig
from search.task.baseline import CACHE_DIR, prepare
from tests.support.data import image_folder


@pytest.fixture
def tiny_data(tmp_path) -> str:
    return str(image_folder(tmp_path / "data", per_class=12, size=16))


def test_baseline_is_reproducible_and_cached(tmp_path, tiny_data):
    cfg = RunConfig(model="test_resnet", img_size=16, epochs=1, data=tiny_data)
    logs: list[str] = []
    a = prepare(cfg, cfg.model, tmp_path / "a", logs.append, logs.append)
    b = prepare(cfg, cfg.model, tmp_path / "b", logs.append, logs.append)
    for (name, x), (_, y) in zip(a.base.state_dict().items(), b.base.state_dict().items()):
        assert torch.equal(x, y), name
    assert len(list((tmp_path / "a" / CACHE_DIR).glob("*/model.pt"))) == 1
    logs.clear()
    prepare(cfg, cfg.model, tmp_path / "a", logs.append, logs.append)
    assert any("cached" in m for m in logs) and not any("training" in m for m in logs)
    other = prepare(cfg.replace(seed=1), cfg.model, tmp_path / "a", logs.append, logs.append)
    assert len(list((tmp_path / "a" / CACHE_DIR).glob("*/model.pt"))) == 2
    assert not torch.equal(next(iter(other.base.parameters())), next(iter(a.base.parameters())))


def test_named_teacher_is_trained_cached_and_handed_to_distillation(tmp_path, tiny_data):
    from search.study.objective import Objective
    from search.study.progress import Progress

    cfg = RunConfig(model="test_vit", img_size=16, patch_size=4, epochs=1, teacher="test_resnet",
                    data=tiny_data)
    logs: list[str] = []
    task = prepare(cfg, cfg.model, tmp_path, logs.append, logs.append)
    assert type(task.teacher).__name__ == "ResNet" and task.teacher_name == "test_resnet"
    assert any(m.startswith("teacher: training test_resnet") for m in logs)
    progress = Progress(cfg.objectives, cfg.directions, quiet=True)
    ctx = Objective(cfg, {cfg.model: task}, None, None, tmp_path, progress).context(task)
    assert ctx.teacher is task.teacher and ctx.lr == 5e-4  # the ViT fine-tuning default
    logs.clear()
    prepare(cfg, cfg.model, tmp_path, logs.append, logs.append)
    assert any(m.startswith("teacher: cached") for m in logs)
    base_taught = prepare(cfg.replace(teacher="base"), cfg.model, tmp_path, logs.append, logs.append)
    ctx = Objective(cfg, {cfg.model: base_taught}, None, None, tmp_path, progress).context(base_taught)
    assert ctx.teacher is base_taught.base
