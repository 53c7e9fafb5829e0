"""The final side-by-side latency pass gives each file its own input shape: base models of different
input sizes in one study (a ResNet at 32 px, a MobileNet at 64 px) are each timed at their own size."""

from __future__ import annotations

import timm
import torch

from search.candidate.build import export_onnx
from search.front.finalize import side_by_side
from targets import create_target


def test_each_file_is_timed_at_its_own_input_size(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3).eval()
    small = export_onnx(model, torch.zeros(1, 3, 16, 16), tmp_path / "16.onnx")
    large = export_onnx(model, torch.zeros(1, 3, 32, 32), tmp_path / "32.onnx")
    target = create_target("host", threads=1, repeats=5)
    # onnxruntime refuses an input whose height and width differ from the graph's: a shared shape fails
    latencies = side_by_side(target, [small, large], [(1, 3, 16, 16), (1, 3, 32, 32)])
    assert len(latencies) == 2 and all(lat.median_ms > 0 for lat in latencies)
    same = side_by_side(target, [small], (1, 3, 16, 16))  # one shape for every file, as before
    assert same[0].median_ms > 0
