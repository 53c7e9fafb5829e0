"""``build(..., screen=...)``: the candidate's structure is exported before recovery fine-tuning, with
the same export and ONNX steps, so its latency and size are the final artifact's: the two graphs are
the same operators on the same shapes and types, only weight values differ. A screen that raises
stops the build before any fine-tuning."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import timm
import torch

from search.candidate.build import RUNG_DIR, STRUCTURE_DIR, Rungs, build
from spaces import Candidate, Context, Step
from spaces.data import TensorSplit

SIZE = 16


def skeleton(path: Path) -> list[tuple]:
    """What a runtime's cost depends on: each node's operator, inputs' shapes and attributes, and every
    initializer's shape and type (not its values)."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: (tuple(i.dims), i.data_type) for i in graph.initializer}
    def attrs(node: onnx.NodeProto) -> str:
        return repr(sorted((a.name, onnx.helper.get_attribute_value(a)) for a in node.attribute))

    nodes = [(n.op_type, tuple(inits.get(x) for x in n.input), attrs(n)) for n in graph.node]
    return [*nodes, tuple(sorted(inits.values()))]


@pytest.fixture(scope="module")
def task_and_ctx():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4).eval()
    gen = torch.Generator().manual_seed(0)
    train = TensorSplit(torch.randn(64, 3, SIZE, SIZE, generator=gen), torch.arange(64) % 4)
    return SimpleNamespace(base=model), Context(train=train, teacher=model, batch_size=16)


CHAIN = (
    Step("prune", {"ratio": 0.3, "importance": "l2", "scope": "uniform", "residual": "keep"}),
    Step("sparsity", {"level": 0.5}),
    Step("distill", {"epochs": 1, "temperature": 4.0, "alpha": 0.5}),
    Step("quantize", {"mode": "static", "per_channel": True, "calibration": "minmax", "ops": "all"}),
)


def test_the_structure_before_fine_tuning_is_the_final_graph(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    seen: list[Path] = []
    final, _ = build(Candidate(CHAIN), task, tmp_path, ctx, lambda *_: None, screen=seen.append)
    assert seen == [tmp_path / STRUCTURE_DIR / "model.onnx"]
    before, after = onnx.load(str(seen[0])), onnx.load(str(final))
    assert skeleton(seen[0]) == skeleton(final)  # same operators, shapes, types: same latency and size
    assert abs(seen[0].stat().st_size - final.stat().st_size) < 0.01 * final.stat().st_size
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in before.graph.initializer}
    tuned = {i.name: onnx.numpy_helper.to_array(i) for i in after.graph.initializer}
    assert any((weights[k] != tuned[k]).any() for k in weights), "fine-tuning changed no weight"
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["model.onnx"]


def test_a_screen_that_raises_stops_before_fine_tuning(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    stages: list[str] = []

    def stop(path: Path) -> None:
        raise RuntimeError(f"dominated: {path.name}")

    with pytest.raises(RuntimeError, match="dominated: model.onnx"):
        build(Candidate(CHAIN), task, tmp_path, ctx, lambda name, *_: stages.append(name), screen=stop)
    assert "distill" not in stages and "prune" in stages
    assert not (tmp_path / "model.onnx").exists() and (tmp_path / STRUCTURE_DIR / "model.onnx").is_file()


def test_a_candidate_without_fine_tuning_is_not_screened(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    seen: list[Path] = []
    build(Candidate(CHAIN[:2] + CHAIN[3:]), task, tmp_path, ctx, lambda *_: None, screen=seen.append)
    assert seen == [] and not (tmp_path / STRUCTURE_DIR).exists()


def weights(path: Path) -> dict:
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_one_rung_is_exactly_the_plain_fine_tuning(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    plain, _ = build(Candidate(CHAIN), task, tmp_path / "plain", ctx, lambda *_: None)
    staged, _ = build(Candidate(CHAIN), task, tmp_path / "staged", ctx, lambda *_: None,
                      rungs=Rungs((1,), lambda *_: pytest.fail("a one-rung schedule has nothing to judge")))
    a, b = weights(plain), weights(staged)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_rungs_train_in_stages_and_show_each_rungs_artifact(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    judged: list[tuple[int, Path]] = []
    stages: list[str] = []
    final, _ = build(Candidate(CHAIN), task, tmp_path, ctx, lambda name, *_: stages.append(name),
                     rungs=Rungs((1, 3), lambda epochs, path: judged.append((epochs, path)) or True))
    assert judged == [(1, tmp_path / RUNG_DIR.format(epochs=1) / "model.onnx")]
    assert skeleton(judged[0][1]) == skeleton(final)  # the rung's file is the candidate's graph, quantized
    assert any((weights(judged[0][1])[k] != v).any() for k, v in weights(final).items())  # 2 more epochs
    assert stages.count("distill") == 2  # 1 epoch, then 2 more


def test_a_judge_that_says_no_ends_the_build_with_its_rungs_model(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    stages: list[str] = []
    path, model = build(Candidate(CHAIN), task, tmp_path, ctx, lambda name, *_: stages.append(name),
                        rungs=Rungs((1, 9), lambda epochs, path: False))
    assert path == tmp_path / RUNG_DIR.format(epochs=1) / "model.onnx" and path.is_file()
    assert stages.count("distill") == 1 and not (tmp_path / "model.onnx").exists()
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())  # finalized: masks applied


def test_a_judge_that_raises_stops_at_its_rung(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    stages: list[str] = []

    def stop(epochs: int, path: Path) -> None:
        raise RuntimeError(f"ranked out at {epochs}")

    with pytest.raises(RuntimeError, match="ranked out at 1"):
        build(Candidate(CHAIN), task, tmp_path, ctx, lambda name, *_: stages.append(name),
              rungs=Rungs((1, 9), stop))
    assert stages.count("distill") == 1 and not (tmp_path / "model.onnx").exists()
