"""``resolution``: the candidate runs at a stepped share of the data's input size. Its steps suit the
model, its training images, teacher and exported file all take the new size, and evaluation reads
the size from the file (an ImageFolder split at another size is the transform ``predict.py`` uses)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import timm
import torch

from search.candidate.build import build
from search.candidate.evaluate import at_input_size, input_shape, onnx_accuracy
from search.task.data import load_dataset, model_preprocess
from spaces import TECHNIQUES, Candidate, Context, Step
from spaces.data import TensorSplit
from spaces.resolution import AtSize, scaled_size, size_step
from tests.support.data import image_folder
from tests.support.onnx import run_onnx_file


def test_steps_suit_the_model():
    cnn = timm.create_model("test_resnet", num_classes=3)
    assert size_step(cnn, 224) == 32  # the output stride: 224 holds 7 of them
    assert size_step(cnn, 96) == 16 and size_step(cnn, 32) == 8  # halved until 4 steps fit
    vit = timm.create_model("test_vit", num_classes=3, img_size=32, patch_size=4)
    assert size_step(vit, 32) == 4  # the patch
    assert [scaled_size(224, s, 32) for s in (0.25, 0.4, 0.6, 0.75, 1.0)] == [64, 96, 128, 160, 224]
    assert scaled_size(32, 0.1, 8) == 8  # at least one step
    assert scaled_size(30, 1.0, 8) == 30  # full scale is the data's own size, stepped or not


def test_tensor_split_at_size_resizes_and_scales_the_shift():
    x = torch.randn(6, 3, 32, 32)
    split = TensorSplit(x, torch.arange(6), shift=4)
    half = split.at_size(16)
    assert half.size == 16 and half.shift == 2 and half.images(2).shape == (2, 3, 16, 16)
    assert (half.labels == split.labels).all()
    assert split.at_size(32) is split
    flat = TensorSplit(torch.full((2, 3, 32, 32), 0.7), torch.arange(2))
    assert torch.allclose(flat.at_size(12).x, torch.full((2, 3, 12, 12), 0.7))  # a mean-preserving resize


def test_folder_split_at_size_is_the_split_loaded_at_that_size(tmp_path):
    root = image_folder(tmp_path / "data", per_class=6, size=40)
    args = ("", 0, 0.2, 0.2)

    def loaded(size: int):
        prep = model_preprocess("test_resnet", size, str(root))
        return load_dataset(str(root), size, prep.mean, prep.std, *args[1:], preprocess=prep, workers=0)

    at_32 = loaded(32).val
    direct = loaded(24).val
    resized = at_32.at_size(24)
    assert resized.size == 24 and at_32.size == 32
    assert torch.equal(resized.images(4), direct.images(4))  # timm's resize + centre crop at 24
    assert list(resized.files) == list(direct.files)


@pytest.fixture
def task_and_ctx():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4).eval()
    gen = torch.Generator().manual_seed(0)
    train = TensorSplit(torch.randn(48, 3, 32, 32, generator=gen), torch.arange(48) % 4)
    return SimpleNamespace(base=model, input_shape=(1, 3, 32, 32)), Context(train=train, teacher=model,
                                                                             batch_size=16)


def test_a_candidate_builds_trains_and_exports_at_its_own_size(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    seen = []
    distill = Step("distill", {"epochs": 1, "temperature": 4.0, "alpha": 0.5})
    steps = (Step("resolution", {"scale": 0.5}), distill)
    path, model = build(Candidate(steps), task, tmp_path, ctx, lambda *_: None, screen=seen.append)
    assert input_shape(path, task.input_shape) == (1, 3, 16, 16)
    assert input_shape(seen[0], task.input_shape) == (1, 3, 16, 16)  # the structure screened at its size
    declared = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    dims = [d.dim_param or d.dim_value for d in declared]
    assert dims == ["batch", 3, 16, 16]
    x = ctx.train.at_size(16).images(3)
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx_file(path, x), model(x).numpy(), atol=1e-4, rtol=1e-4)
    # the accuracy reads the split at the file's size (a 32 px split would not even run)
    assert 0.0 <= onnx_accuracy(path, ctx.train) <= 1.0
    assert at_input_size(ctx.train, 16).size == 16 and at_input_size(ctx.train, "S") is ctx.train


def test_full_scale_adds_nothing_to_a_chain(task_and_ctx, tmp_path):
    task, ctx = task_and_ctx
    sparse = Step("sparsity", {"level": 0.5})
    plain, _ = build(Candidate((sparse,)), task, tmp_path / "plain", ctx, lambda *_: None)
    full, _ = build(Candidate((Step("resolution", {"scale": 1.0}), sparse)), task, tmp_path / "full", ctx,
                    lambda *_: None)
    assert input_shape(full, task.input_shape) == (1, 3, 32, 32)
    x = ctx.train.images(4)
    np.testing.assert_allclose(run_onnx_file(full, x), run_onnx_file(plain, x), atol=1e-5, rtol=1e-5)


def test_the_teacher_sees_the_students_images_at_its_own_size():
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", num_classes=4).eval()
    model = timm.create_model("test_resnet", num_classes=4).eval()
    ctx = Context(train=TensorSplit(torch.randn(8, 3, 32, 32), torch.arange(8) % 4), teacher=teacher)
    adapted = TECHNIQUES.get("resolution")().adapt(model, {"scale": 0.5}, ctx)
    assert isinstance(adapted.teacher, AtSize) and adapted.teacher.size == 32
    small = adapted.train.images(2)
    up = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(adapted.teacher(small), teacher(up))


def test_a_vit_resamples_its_position_embeddings(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=4, img_size=32, patch_size=4).eval()
    ctx = Context(train=TensorSplit(torch.randn(16, 3, 32, 32), torch.arange(16) % 4), batch_size=8)
    task = SimpleNamespace(base=vit, input_shape=(1, 3, 32, 32))
    half = Candidate((Step("resolution", {"scale": 0.5}),))
    path, model = build(half, task, tmp_path, ctx, lambda *_: None)
    assert input_shape(path, task.input_shape) == (1, 3, 16, 16)
    assert model.patch_embed.grid_size == (4, 4) and model.pos_embed.shape[1] == 16 + 1  # 4x4 + class token
    assert vit.pos_embed.shape[1] == 64 + 1  # the base model is untouched


def test_input_shape_keeps_the_default_for_a_dynamic_file(tmp_path: Path):
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["b", 3, "h", "w"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 3, "h", "w"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input"], ["y"])], "g", [x], [y])
    path = tmp_path / "dyn.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    assert input_shape(path, (1, 3, 32, 32)) == (1, 3, 32, 32)
