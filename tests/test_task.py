"""The baseline: seeded, so training it twice gives the same weights; then cached by its key."""

import torch

from search.config import RunConfig
from search.task import CACHE_DIR, prepare


def test_baseline_is_reproducible_and_cached(tmp_path):
    cfg = RunConfig(model="test_resnet", img_size=16, epochs=1)
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
