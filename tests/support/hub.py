"""A Hugging Face cache made by a test (timm's pretrained weights without any download), and a Python
run offline against it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import safetensors.torch
import timm
import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[2]


def hf_cache(root: Path, name: str, seed: int) -> Path:
    """A Hugging Face cache holding random ImageNet-shaped (1000-class) weights for ``name``, laid out
    as the hub writes it; the path of the weights file."""
    repo = timm.get_pretrained_cfg(name).hf_hub_id
    assert repo.startswith("timm/")
    folder = root / f"models--timm--{repo.removeprefix('timm/')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    torch.manual_seed(seed)
    weights = timm.create_model(name, num_classes=1000).state_dict()
    file = snapshot / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in weights.items()}, str(file))
    return file


def offline_python(code: str, cache: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
        env=offline_env(cache, home), timeout=300,
    )


def offline_env(cache: Path, home: Path) -> dict[str, str]:
    """This process's environment without HF settings, pointed at ``cache`` with the hub offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env
