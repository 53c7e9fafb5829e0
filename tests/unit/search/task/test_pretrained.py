"""``create(..., pretrained=True)``: timm's weights from a Hugging Face cache, with no network
(``HF_HUB_OFFLINE=1``), a new classifier for the data's classes and, for a ViT, embeddings resampled
to the small input; without them, one line saying what to do.

huggingface_hub reads its cache and offline settings when imported, so each check runs in a fresh
Python with the environment set.
"""

from __future__ import annotations

import pytest
import timm

from search.core.errors import UserError
from search.task.models import create
from tests.support.hub import hf_cache, offline_python

LOAD = """
import sys
import huggingface_hub, safetensors.torch, torch
from search.task.models import create

for name, file, backbone in [a.split(",") for a in sys.argv[1:]]:
    model = create(name, 3, 32, pretrained=True)
    saved = safetensors.torch.load_file(file)
    assert torch.equal(model.state_dict()[backbone], saved[backbone]), name
    assert model.get_classifier().out_features == 3, name
    print(name, getattr(getattr(model, "patch_embed", None), "patch_size", None))
# timm's own path to the cache finds the same file (the layout is what the hub writes)
repo = "timm/" + file.split("models--timm--")[1].split("/")[0]
print(huggingface_hub.hf_hub_download(repo, "model.safetensors") == file)
"""

FAIL = """
from search.core.errors import UserError
from search.task.models import create

try:
    create("test_resnet", 3, 32, pretrained=True)
except UserError as exc:
    print(exc)
"""


@pytest.mark.slow  # a fresh Python with the hub offline: ~10 s
def test_pretrained_weights_load_from_the_cache_offline(tmp_path):
    cache = tmp_path / "hub"
    resnet = hf_cache(cache, "test_resnet", seed=1)
    vit = hf_cache(cache, "test_vit", seed=2)
    args = (f"test_resnet,{resnet},conv1.0.weight", f"test_vit,{vit},blocks.0.attn.qkv.weight")
    done = offline_python(LOAD, cache, tmp_path / "home", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    # the ViT is built for 32 px with 4-px patches: timm resampled its 16-px patch embedding
    assert done.stdout.split("\n")[:3] == ["test_resnet None", "test_vit (4, 4)", "True"]


@pytest.mark.slow  # a fresh Python with the hub offline: ~10 s
def test_weights_neither_cached_nor_downloadable_say_what_to_do(tmp_path):
    cache = tmp_path / "empty"
    cache.mkdir()
    done = offline_python(FAIL, cache, tmp_path / "home")
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip()
    assert "\n" not in line
    expected = f"timm's pretrained weights for test_resnet are not in the Hugging Face cache {cache} "
    assert line.startswith(expected)
    assert "could not be downloaded" in line and "--checkpoint FILE" in line
    assert "python -c \"import timm; timm.create_model('test_resnet', pretrained=True)\"" in line


def test_a_model_timm_has_no_weights_for():
    assert timm.is_model("convnext_atto_rms") and not timm.get_pretrained_cfg("convnext_atto_rms").hf_hub_id
    with pytest.raises(UserError) as err:
        create("convnext_atto_rms", 2, 32, pretrained=True)
    assert str(err.value) == (
        "timm has no pretrained weights for convnext_atto_rms; leave out --pretrained to train it from "
        "scratch, or pass --checkpoint FILE"
    )
