"""The user's path on their own data: an ImageFolder of JPEGs of any size, timm's pretrained weights
from a local Hugging Face cache (offline), a search, an exported bundle whose ``predict.py`` applies
the model's resize and centre crop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import timm
from PIL import Image

from search.core.stages import STAGE_KEYS
from search.task.data import eval_transform
from search.task.preprocess import Preprocess
from tests.support.hub import ROOT, hf_cache, offline_env

pytestmark = pytest.mark.slow


def jpeg_folder(root, per_class=10):
    """Three classes told apart by colour, JPEGs of varied sizes and aspect ratios."""
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(220, 40, 40), (40, 200, 40), (40, 40, 220)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(24, 90)), int(rng.integers(24, 90))
            arr = np.clip(np.asarray(colour) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


def edgepareto(*args, env):
    code = "import sys; from search.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)


def test_imagefolder_and_pretrained_weights_to_a_bundle(tmp_path):
    data = jpeg_folder(tmp_path / "data")
    cache = tmp_path / "hub"
    hf_cache(cache, "test_resnet", seed=3)
    env = offline_env(cache, tmp_path / "home")
    runs = tmp_path / "runs"
    done = edgepareto("search", "--data", str(data), "--model", "test_resnet", "--pretrained",
                      "--img-size", "32", "--trials", "3", "--space", "quant-only", "--epochs", "1",
                      "--workers", "1", "--name", "own", "--runs-dir", str(runs), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fine-tuning test_resnet from timm:test_resnet for 1 epochs" in done.stderr
    summary = json.loads((runs / "own" / "summary.json").read_text())
    prep = summary["preprocessing"]
    cfg = timm.get_pretrained_cfg("test_resnet")
    assert (prep["mode"], prep["interpolation"]) == ("crop", cfg.interpolation)
    assert prep["crop_pct"] == cfg.crop_pct
    trials = pd.read_csv(runs / "own" / "trials.csv")
    assert trials[list(STAGE_KEYS)].notna().all().all() and (trials.accuracy_s > 0).all()

    bundle = tmp_path / "bundle"
    done = edgepareto("export", "own", "--trial", "0", "--to", str(bundle), "--runs-dir", str(runs), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (71, 133, 3), dtype=np.uint8)).save(photo)
    done = subprocess.run([sys.executable, str(bundle / "predict.py"), str(photo), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = json.loads(done.stdout)
    preprocess = Preprocess.from_dict(prep)
    x = eval_transform(preprocess)(Image.open(photo).convert("RGB"))[None].numpy()
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    top = predicted[0]["top"][0]
    assert summary["preprocessing"]["classes"] == ["class0", "class1", "class2"]
    assert top["index"] == int(probs.argmax()) and top["probability"] == pytest.approx(probs.max(), abs=1e-6)
