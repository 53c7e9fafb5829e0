"""Running an exported model in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


def run_onnx_file(path: Path, x: torch.Tensor) -> np.ndarray:
    """The first output of ``path`` on ``x`` in a fresh onnxruntime CPU session."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
